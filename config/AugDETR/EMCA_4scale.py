# AugDETR Table 4, "+EMCA": the paper's DINO baseline with Encoder-Mixing Cross-Attention over every
# encoder layer (Table 9 mixes subsets: --options emca_enc_layers=[3,4,5]).
_base_ = ['DINO_4scale.py']

use_emca = True
