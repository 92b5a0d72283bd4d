"""A new user's first answer: ``influence demo`` from empty artifacts until it prints its first answer.

    python benchmarks/first_answer.py [--timeout 1200] [-- extra demo arguments, e.g. --full]

Runs the demo in a fresh artifacts folder (``INFLUENCE_ARTIFACTS``), so nothing is cached: it fine-tunes
(a 10,000-row SST-2 subset without a GPU), builds the kNN and the gradient indexes, answers one query and
starts serving. The clock stops when the answer's timings line is printed; the server is then stopped.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result

STAGES = {
    "fine_tuned": re.compile(r"eval accuracy"),
    "knn_index": re.compile(r"indexed [\d,]+ x \d+"),
    "gradient_index": re.compile(r"indexed [\d,]+ gradients"),
    "first_answer": re.compile(r"^timings \(s\):"),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=float, default=1200.0)
    args, demo_arguments = parser.parse_known_args()
    demo_arguments = [a for a in demo_arguments if a != "--"]
    command = [str(Path(sys.executable).with_name("influence")), "demo", "--port", "8765", *demo_arguments]
    with tempfile.TemporaryDirectory() as artifacts:
        env = {**os.environ, "INFLUENCE_ARTIFACTS": artifacts, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
        start = time.monotonic()
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        seen, transcript = {}, []
        try:
            for line in process.stdout:
                transcript.append(line.rstrip())
                for stage, pattern in STAGES.items():
                    if stage not in seen and pattern.search(line.strip()):
                        seen[stage] = time.monotonic() - start
                        print(f"{stage}: {seen[stage]:.0f} s", flush=True)
                if "first_answer" in seen or time.monotonic() - start > args.timeout:
                    break
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(60)
    if "first_answer" not in seen:
        raise SystemExit("no answer before the timeout:\n" + "\n".join(transcript[-40:]))
    answer = transcript[next(i for i, t in enumerate(transcript) if "predicted label" in t) :]
    write_result(
        "first_answer",
        {
            "command": "python benchmarks/first_answer.py " + " ".join(sys.argv[1:]),
            "summary": {"first_answer_seconds": seen["first_answer"]},
            "stages_seconds": seen,
            "demo_command": " ".join(["influence", "demo", *demo_arguments]),
            "answer_printed": answer[:60],
        },
    )


if __name__ == "__main__":
    main()
