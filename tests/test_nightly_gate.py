"""The gate's decision on an adapter's measured report (align/gate.decide): what is
refused and why. The measurements themselves run in tests/test_nightly_e2e.py."""
from align.gate import GateConfig, decide


def test_the_gate_sees_replies_grow_past_the_sampling_cap():
    """Samples stop at the cap: a base whose replies end at 100 tokens and an adapter that
    runs to the 128-token cap every time differ by ×1.28 in mean length (within ×1.5),
    yet the adapter writes longer replies; the share cut at the cap tells."""
    config = GateConfig()
    reward = {"heldout_pairs": 4, "implicit_reward_accuracy": 0.75, "mean_h": 0.2,
              "policy_accuracy": 0.75, "base_accuracy": 0.5, "sign_test_p": 0.3}
    drift = {"kl_per_token": 0.1, "length_ratio": 128 / 100, "capped_share_adapter": 1.0,
             "capped_share_base": 0.0}
    publish, reasons = decide({"reward": reward, "drift": drift}, config)
    assert not publish and reasons == ["writes longer replies: 100% of its samples ran to the "
                                       "128-token cap against 0% of the base's"]
    drift.update(capped_share_adapter=2 / 6)                      # two more of six: allowed
    assert decide({"reward": reward, "drift": drift}, config) == (True, [])
    drift.update(capped_share_adapter=1.0, capped_share_base=1.0)  # both run long: can't tell
    assert decide({"reward": reward, "drift": drift}, config) == (True, [])
