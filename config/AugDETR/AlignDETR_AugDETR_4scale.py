# AugDETR on AlignDETR (the paper's main table): AlignDETR's loss and matching (config/AlignDETR/
# AlignDETR_4scale.py) with HAE and EMCA, 12 epochs.
_base_ = ['../AlignDETR/AlignDETR_4scale.py']

use_hae = True
use_emca = True
