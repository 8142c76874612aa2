"""The skip ledger (tests/_skips.py): patterns read from tests/SKIPS.md, node ids matched, unlisted skips fail."""

from __future__ import annotations

import pytest
from _skips import LEDGER, is_listed, ledger_patterns

PATTERNS = ledger_patterns(LEDGER.read_text(encoding="utf-8"))


def test_patterns_are_the_first_column_of_the_table():
    text = ("# title\n\n| test | skips when | why |\n|---|---|---|\n"
            "| `tests/a.py::t_*`, `b_test[x]` | when `c` is missing | `not_a_pattern` |\n"
            "a `stray.py` line outside the table\n")
    assert ledger_patterns(text) == ["tests/a.py::t_*", "b_test[x]"]
    assert "tests/test_browser.py" in PATTERNS and "test_build_from_each_family[hf]" in PATTERNS


@pytest.mark.parametrize("nodeid", [
    "tests/test_browser.py",  # the module skipped at import (playwright missing)
    "tests/test_browser.py::test_pages_render[index]",
    "tests/test_kernels.py::test_spatial_reduce_kernel_gpu[shape0-dtype0-nchw]",
    "tests/test_kernels.py::test_merge_topk_kernel_gpu",
    "tests/test_mine.py::test_weights_cast_once_give_autocasts_results_gpu[open_clip:RN50@random:0]",
    "tests/test_checkpoints.py::test_hf_clip_directory_matches_transformers",
    "tests/test_zoo.py::test_hf_clip_directory_matches_transformers[ViT-B-32]",
    "tests/test_checkpoints.py::test_build_from_each_family[hf]",
    "tests/test_decode.py::test_permission_denied_is_unreadable",
    "tests/test_kernels.py::test_kernels_in_the_interpreter",
])
def test_listed_skips_pass(nodeid):
    assert is_listed(nodeid, PATTERNS)


@pytest.mark.parametrize("nodeid", [
    "tests/test_mine.py::test_mine_resumes",  # a file with some listed tests, but not this one
    "tests/test_kernels.py::test_gpu_is_not_a_suffix",
    "tests/test_checkpoints.py::test_build_from_each_family[openai]",  # another parameter of a listed test
    "tests/test_browserx.py::test_page",  # a file pattern is the whole path, not a prefix
    "tests/test_zoo.py",
    "tests/test_decode.py::test_permission_denied_is_unreadable_too",
])
def test_unlisted_skips_fail(nodeid):
    assert not is_listed(nodeid, PATTERNS)


def test_brackets_are_literal():
    assert is_listed("tests/t.py::test_x[hf]", ["test_x[hf]"])
    assert not is_listed("tests/t.py::test_x[h]", ["test_x[hf]"])  # not a character set
    assert is_listed("tests/t.py::Class::test_y[1-2]", ["tests/t.py::Class::test_*"])


def test_an_unlisted_skip_fails_the_run(pytester, monkeypatch):
    """pytest runs with the plugin, each in a process of its own (the suite has imported the real test_browser):
    a listed skip passes, an unlisted one sets exit status 1."""
    from pathlib import Path

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent))  # where _skips lives
    pytester.makepyfile(**{"tests/test_browser.py": "import pytest\n\ndef test_page():\n    pytest.skip('no chromium')\n"})
    args = ("-p", "_skips", "-p", "no:cacheprovider")
    listed = pytester.runpytest_subprocess(*args)
    listed.assert_outcomes(skipped=1)
    assert listed.ret == pytest.ExitCode.OK and "SKIPS.md" not in listed.stdout.str()

    pytester.makepyfile(test_other="import pytest\n\n@pytest.mark.skipif(True, reason='no reason')\ndef test_x():\n"
                                   "    pass\n\ndef test_y():\n    pass\n\n@pytest.mark.xfail\ndef test_z():\n    assert 0\n")
    run = pytester.runpytest_subprocess(*args)
    run.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert run.ret == pytest.ExitCode.TESTS_FAILED
    run.stdout.fnmatch_lines(["*skips not listed in tests/SKIPS.md*", "test_other.py::test_x: skipped (no reason)",
                              "1 unlisted skip(s)*SKIPS.md*"])
