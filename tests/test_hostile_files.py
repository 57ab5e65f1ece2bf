"""Every file of the hostile corpus (tests/hostile_corpus.py) loads, or is refused with a LoadError,
within 2 s (of CPU time) and 512 MB, checked in a subprocess under resource.setrlimit (RLIMIT_AS and
RLIMIT_CPU).

The limits make a regression fail instead of swapping the machine: a memory bomb that is no
longer caught dies in the worker (MemoryError or a kill), and the file it died on is reported.
Files are loaded in batches by one worker process; after a death, a new worker resumes at the
next file.
"""

import json
import os
import re
import selectors
import subprocess
import sys

import hostile_corpus

from checks import CHILD_CWD, child_env

LIMIT_MB = 512
SECONDS = 2.0
HERE = os.path.dirname(os.path.abspath(__file__))


def _run_worker(paths, listing):
    """Yield one result dict per path, in order; a path the worker died or hung on gets a 'died' result."""
    env = child_env(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    todo = list(paths)
    while todo:
        with open(listing, "w") as f:
            f.write("\n".join(todo))
        cpu = int(10 + 3 * SECONDS * len(todo))
        proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "hostile_worker.py"), str(LIMIT_MB), str(cpu), listing],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        # The first line also waits for the interpreter and fastlstm to start.
        timeout, done = 30.0, 0
        while done < len(todo):
            if not sel.select(timeout):
                proc.kill()
                break
            line = proc.stdout.readline()
            if not line:
                break
            result = json.loads(line)
            assert result["path"] == todo[done]
            yield result
            done, timeout = done + 1, 5 * SECONDS
        proc.kill()
        _, err = proc.communicate()
        sel.close()
        if done < len(todo):
            tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["(no stderr)"]
            yield {
                "path": todo[done],
                "status": "died",
                "type": f"exit {proc.returncode}",
                "msg": tail[0],
                "msg_len": 0,
                "seconds": float("nan"),
                "cpu_seconds": float("nan"),
            }
            done += 1
        todo = todo[done:]


def _problems(case, path, result):
    out = []
    status = result["status"]
    if status not in ("ok", "LoadError"):
        out.append(f"{status} {result['type']}: {result['msg'][:300]}")
    elif case.must_fail and status == "ok":
        out.append("loaded, but must be refused")
    elif status == "LoadError":
        if not result["msg"].startswith(path):
            out.append(f"message does not start with the file name: {result['msg'][:200]}")
        if result["msg_len"] > 2000:
            out.append(f"message of {result['msg_len']} characters")
        if "MemoryError" in result["msg"]:  # refused only because the process ran out: no cap caught it
            out.append(f"hit the memory limit: {result['msg'][:300]}")
        if case.match and not re.search(case.match, result["msg"]):
            out.append(f"refused for another reason than /{case.match}/: {result['msg'][:300]}")
    # CPU time for the bound (other jobs on the machine do not count), wall time against hangs.
    if not (result["cpu_seconds"] < SECONDS and result["seconds"] < 5 * SECONDS):
        out.append(f"took {result['cpu_seconds']:.2f} s of CPU, {result['seconds']:.2f} s in all")
    return out


def _check(cases, tmp_path):
    paths = []
    for case in cases:
        path = str(tmp_path / case.name)
        with open(path, "wb") as f:
            f.write(case.data)
        paths.append(path)
    by_path = dict(zip(paths, cases))
    failures = []
    for result in _run_worker(paths, str(tmp_path / "listing.txt")):
        problems = _problems(by_path[result["path"]], result["path"], result)
        failures += [f"{os.path.basename(result['path'])}: {p}" for p in problems]
    assert not failures, "\n".join(failures)


def test_hostile_files_refused_within_limits(tmp_path):
    cases = list(hostile_corpus.hostile())
    assert len(cases) >= 40
    _check(cases, tmp_path)


def test_fuzzed_files_load_or_refuse_within_limits(tmp_path):
    cases = list(hostile_corpus.fuzzed())
    _check(
        cases + [hostile_corpus.Case(n, d, must_fail=False) for n, d in hostile_corpus.valid_files().items()], tmp_path
    )


def test_worker_catches_a_memory_bomb(tmp_path, monkeypatch):
    """The harness itself: with the memo check switched off, the 389-byte memo bomb must hit the memory
    limit (the unpickler's MemoryError, or the worker's death) instead of quietly allocating 2 GB."""
    case = next(c for c in hostile_corpus.hostile() if c.name == "memo_bomb.pt")
    path = tmp_path / case.name
    path.write_bytes(case.data)
    code = (
        "import fastlstm.loaders.torch_zip as t; t._prescan = lambda pkl: None; "
        "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    listing = tmp_path / "l.txt"
    listing.write_text(str(path))
    out = subprocess.run(
        [sys.executable, "-c", code, os.path.join(HERE, "hostile_worker.py"), str(LIMIT_MB), "20", str(listing)],
        capture_output=True,
        env=child_env(OPENBLAS_NUM_THREADS="1"),
        cwd=CHILD_CWD,
        timeout=60,
    )
    lines = out.stdout.decode().splitlines()
    result = json.loads(lines[0]) if lines else {"status": "died"}
    assert result["status"] == "died" or "MemoryError" in result["msg"], result
