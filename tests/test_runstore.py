"""The shared pieces under every run folder and output: the atomic write, the file digest,
the one-line error text, cached evaluations and the best-epoch rule."""

import errno
import hashlib
import json
import os
import urllib.error

import pytest

from repdiag.errors import UserError, reason, user_error
from repdiag.files import atomic_copy, atomic_write, atomic_write_text, file_digest
from repdiag.runs import best_epoch
from train.runstore import cached_evaluation, evaluation_key


def test_file_digest_is_hashlib_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "blob.bin"
    data = os.urandom(5 << 20)  # more than one 4 MiB block
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()
    assert file_digest(path, 16) == hashlib.sha256(data).hexdigest()[:16]


def test_atomic_write_replaces_whole_or_keeps_the_old_file(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "first")
    assert path.read_text() == "first"

    def fail(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, fail)
    assert path.read_text() == "first" and os.listdir(path.parent) == ["a.txt"]
    src = tmp_path / "src.bin"
    src.write_bytes(b"\x00\x01" * 1000)
    os.chmod(src, 0o640)
    atomic_copy(src, path)
    assert path.read_bytes() == src.read_bytes() and (os.stat(path).st_mode & 0o777) == 0o640
    assert sorted(os.listdir(path.parent)) == ["a.txt"]


def test_reason_names_the_type_at_most_once():
    disk = OSError(errno.ENOSPC, "No space left on device", "/x/y")
    assert reason(disk) == "No space left on device"
    assert str(user_error("cannot write /x/y", disk)) == "cannot write /x/y: No space left on device"
    assert reason(RuntimeError("first line\nsecond line")) == "first line"
    assert reason(ValueError()) == "ValueError"
    url = urllib.error.URLError("no network")
    assert reason(url, typed=True) == "URLError: <urlopen error no network>"
    # a message that already starts with its type name is not given the name twice
    assert reason(ValueError("ValueError: bad"), typed=True) == "ValueError: bad"
    long = ValueError("word " * 100)
    cut = reason(long, typed=True, limit=60)
    assert len(cut) <= len("ValueError: ") + 60 and cut.endswith(" ...") and "wor ..." not in cut
    assert isinstance(user_error("x", disk), UserError)


def test_cached_evaluation_key_is_the_digest_and_settings(tmp_path):
    ck = tmp_path / "last.pt"
    ck.write_bytes(b"weights")
    settings = {"probes": ["knn"], "on": None, "rank": True, "linear": "fast", "limit": None, "v": 1}
    # the analyses' cache file names: sha256 of json [sha256(file)[:16], settings...] cut to 16
    legacy = hashlib.sha256(json.dumps([hashlib.sha256(b"weights").hexdigest()[:16], settings])
                            .encode()).hexdigest()[:16]
    assert evaluation_key(ck, [settings]) == legacy
    calls = []

    def compute():
        calls.append(1)
        return {"accuracy": {"knn": {"h": 0.5}}}

    assert cached_evaluation(ck, [settings], compute) == compute()
    calls.clear()
    cache = tmp_path / f"eval-last-{legacy}.json"
    assert cache.exists()
    assert cached_evaluation(ck, [settings], compute)["accuracy"]["knn"]["h"] == 0.5 and not calls
    cache.write_text("{trunc")  # a damaged cache is measured again, then whole
    assert cached_evaluation(ck, [settings], compute)["accuracy"]["knn"]["h"] == 0.5 and calls
    assert json.loads(cache.read_text()) == compute()
    ck.write_bytes(b"retrained")  # other bytes: another key, measured again
    calls.clear()
    cached_evaluation(ck, [settings], compute)
    assert calls and len(list(tmp_path.glob("eval-last-*.json"))) == 2


def test_best_epoch_is_the_first_lowest_finite_validation_loss():
    m = [{"epoch": 1, "val_loss": 2.0}, {"epoch": 2, "val_loss": float("nan")},
         {"epoch": 3, "val_loss": 1.0}, {"epoch": 4, "val_loss": 1.0}, {"epoch": 5}]
    assert best_epoch(m) == 3
    assert best_epoch([{"epoch": 1}]) is None


def test_two_paths_to_one_file_are_the_same_setting(tmp_path):
    """A pretrained head reached through a symbolic link (or a relative path) is the same
    run setting; another file with the same bytes is not."""
    from train.runstore import config_difference

    real = tmp_path / "runs" / "linear-s1"
    real.mkdir(parents=True)
    (real / "last.pt").write_bytes(b"weights")
    (tmp_path / "link").symlink_to(tmp_path / "runs")
    stored = {"seed": 1, "head": {"pretrained": str(tmp_path / "link" / "linear-s1" / "last.pt")}}
    assert config_difference(stored, {"seed": 1, "head": {"pretrained": str(real / "last.pt")}}) is None
    copy = tmp_path / "copy.pt"
    copy.write_bytes(b"weights")
    assert config_difference(stored, {"seed": 1, "head": {"pretrained": str(copy)}}) == (
        f"head.pretrained (folder: {stored['head']['pretrained']!r}, grid: {str(copy)!r})")
    missing = {"seed": 1, "head": {"pretrained": str(tmp_path / "gone.pt")}}
    assert config_difference(missing, {"seed": 1, "head": {"pretrained": str(real / "last.pt")}})
