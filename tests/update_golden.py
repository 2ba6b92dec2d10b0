"""Regenerate the golden IR dumps: python tests/update_golden.py

Every examples/*.fc model at every stage (tensor, feasibility, plan), batch 4, written to
tests/golden/<model>.<stage>.ir. Review the diff before committing it.
"""
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("tensor", "feasibility", "plan")
BATCH = 4


def golden_cases():
    for path in sorted(glob.glob(os.path.join(ROOT, "examples", "*.fc"))):
        name = os.path.splitext(os.path.basename(path))[0]
        for stage in STAGES:
            yield path, stage, os.path.join(ROOT, "tests", "golden", f"{name}.{stage}.ir")


def render(path, stage):
    import feascomp

    return feascomp.compile(path, batch_size=BATCH).dump(stage)


def main():
    for path, stage, out in golden_cases():
        with open(out, "w") as fh:
            fh.write(render(path, stage))
        print(out)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
