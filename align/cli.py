"""`align`: the training command group. Sub-commands arrive with the reward and DPO issues."""
import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="align", description="Glance's on-device learning (reward model, nightly DPO).")
    parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        print("\nNo commands yet: the reward model and nightly DPO arrive in later releases.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
