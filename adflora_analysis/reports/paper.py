"""Numbers reported in the ADF-LoRA paper (arXiv 2511.18291), labelled as the paper's.

Decentralized setting, RoBERTa-large, r = 8, 10 clients, encounter q = 0.1, T = 5 unless noted.
Only averages over SST-2, QNLI, QQP and MNLI are stored here; per-task numbers are not copied.
"""

PAPER_DFL_AVERAGE = {"lora": 84.58, "ffa-lora": 82.68, "rolora": 82.84, "adf-lora": 85.05}
"""Average accuracy (%) over SST-2, QNLI, QQP, MNLI in the decentralized setting."""

PAPER_T_ABLATION = {1: 84.35, 5: 85.05, 10: 83.93, 20: 84.21}
"""ADF-LoRA average accuracy (%) against the switching interval T."""

PAPER_TASKS = ("sst2", "qnli", "qqp", "mnli")
