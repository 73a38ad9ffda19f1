# AugDETR Table 4, "+HAE": the paper's DINO baseline with the Hybrid Attention Encoder (the first
# num_hae_layers = 2 encoder layers hybrid; Table 6 varies it: --options num_hae_layers=N).
_base_ = ['DINO_4scale.py']

use_hae = True
