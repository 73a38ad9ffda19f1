# AlignDETR on the tiny synthetic DINO of config/DINO/DINO_synthetic.py (3 decoder layers): the same
# model and budget as `python main.py`, with AlignDETR's loss and matching (for scripts/ablation_main_table.sh).
_base_ = ['../DINO/DINO_synthetic.py']

criterion_type = 'aligndetr'
aligndetr_alpha = 0.25
aligndetr_gamma = 2.0
aligndetr_tau = 1.5
o2m_k = [2, 2, 2, 1]  # encoder proposals, decoder layers 1..3
