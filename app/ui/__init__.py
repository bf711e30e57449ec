"""Every line of Qt in Glance lives in this package; it stays a thin shell over the core."""
