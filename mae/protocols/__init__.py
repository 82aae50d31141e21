"""Protocols: thin recipes (a Config dataclass, PRESETS, ``run``) over the one training loop.

- ``pretrain``: MAE pre-training (Sec. 3, Appendix A.1)
- ``finetune``: end-to-end fine-tuning (Appendix A.2)
- ``linprobe``: linear probing on the frozen encoder (Appendix A.3)
- ``partial``: partial fine-tuning of the last k blocks (Sec. 4.3, Fig. 9)
- ``readout``: training-free readouts of a frozen encoder or of raw pixels (kNN, k-shot, converged probe)
- ``tokenizer``: the VQ tokenizer of Table 1d's token target (the token row's stage 0)
"""
PROTOCOLS = ("pretrain", "finetune", "linprobe", "partial", "readout", "tokenizer")
