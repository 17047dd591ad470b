"""`make demo`: the one-command end-to-end demo (lands with the e2e issue)."""

import sys


def main() -> int:
    print("make demo: not yet available — the end-to-end demo lands with the e2e issue.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
