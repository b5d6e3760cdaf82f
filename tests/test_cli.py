"""The terminal commands, run as a user runs them (a subprocess), on the tiny model."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def refengine(*arguments: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refengine.cli", *arguments], input=stdin, capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_chat_answers_every_turn_and_generate_prints_a_completion(tiny_model_dir):
    chat = refengine("chat", "--model", str(tiny_model_dir), "--temperature", "0", "--max-tokens", "5",
                     stdin="Hello there\nAnd again, a second turn\n/exit\n")
    assert chat.returncode == 0, chat.stderr
    turns = chat.stdout.split("> ")
    assert len(turns) == 4 and all(t.strip() for t in turns[1:3]), chat.stdout   # two replies, then /exit
    single = refengine("generate", "Hello there", "--model", str(tiny_model_dir), "--temperature", "0",
                       "--max-tokens", "5")
    assert single.returncode == 0 and single.stdout.strip() == turns[1].strip()   # the same first reply
    bad = refengine("serve", "--prefill-chunk", "0")
    assert bad.returncode == 2 and "--prefill-chunk: must be at least 1" in bad.stderr
