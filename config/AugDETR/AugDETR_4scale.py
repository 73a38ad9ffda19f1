# AugDETR on DINO-4scale R50, 12 epochs (the paper's main table and Table 4, last row): HAE and EMCA on
# the paper's DINO baseline. Same model as `-c config/DINO/DINO_4scale.py --use_hae --use_emca` with the
# reproduction README's options.
_base_ = ['DINO_4scale.py']

use_hae = True
use_emca = True
