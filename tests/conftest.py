"""Test-wide settings: no hub calls (they retry for 20-45 s offline), headless plotting."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny RoBERTa with a locally trained tokenizer, built once per test session."""
    from adflora_analysis.glue.tiny import build_tiny_roberta

    d = tmp_path_factory.getbasetemp() / "tiny-roberta"
    if not (d / "config.json").exists():
        build_tiny_roberta(d)
    return d


# ---------------------------------------------------------------- the fault campaign's tally
# tests/test_fault_campaign.py records each case's outcome as the report's user_properties
# ("fault_campaign": (family, status, problems, seen)); pytest-xdist ships those to the
# controller, so the tally is printed once, whatever the number of workers.
_CAMPAIGN: dict[str, tuple] = {}


def pytest_runtest_logreport(report):
    if report.when == "teardown":          # holds every property the test recorded
        for key, value in getattr(report, "user_properties", ()):
            if key == "fault_campaign":
                _CAMPAIGN[report.nodeid] = tuple(value)


def pytest_terminal_summary(terminalreporter, config):
    if not _CAMPAIGN or hasattr(config, "workerinput"):
        return
    from collections import defaultdict

    tr = terminalreporter
    fam: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for family, status, _, _ in _CAMPAIGN.values():
        f = fam[family]
        f[0] += status != "skipped"
        f[1] += status == "handled"
        f[2] += status == "skipped"
    tried = sum(f[0] for f in fam.values())
    handled = sum(f[1] for f in fam.values())
    tr.write_sep("=", "fault campaign")
    tr.write_line(f"{len(_CAMPAIGN)} cases run in {len(fam)} families; tried {tried}, "
                  f"handled {handled}, failing {tried - handled}, skipped "
                  f"{sum(f[2] for f in fam.values())}")
    for name in sorted(fam):
        t, h, s = fam[name]
        tr.write_line(f"  {name:22s} tried {t:4d}  handled {h:4d}  failing {t - h:4d}"
                      + (f"  skipped {s}" if s else ""))
    failing = sorted((n.split("[", 1)[-1].rstrip("]"), p)
                     for n, (_, st, p, _) in _CAMPAIGN.items() if st == "failing")
    if failing:
        tr.write_line("failing cases:")
        for n, p in failing:
            tr.write_line(f"  {n}: {'; '.join(p)[:300]}")
    log = os.environ.get("ADFLORA_CAMPAIGN_LOG")   # every case's outcome, for review
    if log:
        with open(log, "w") as f:
            for n, (fam_, st, p, seen) in sorted(_CAMPAIGN.items()):
                f.write(f"{st:8s} {n} [{fam_}] {seen}" + (f" -- {'; '.join(p)}" if p else "")
                        + "\n")
