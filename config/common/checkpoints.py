# Checkpoint policy and shared-cluster settings of the COCO configs, one default for every detector
# (DINO_4scale.py, DETR/detr_r50.py and DeformableDETR/deformable_detr.py name this file in _base_).
# What each key means: engine/checkpoint_policy.py, docs/reliability.md, or --print_config.
keep_checkpoints = None  # numbered checkpointNNNN.pth kept, the newest N (None = all, DINO's; 0 = none written)
best_checkpoint = 'weights'  # checkpoint_best_regular.pth: weights only, not written while the best epoch is the last
final_checkpoint_optimizer = True  # the last checkpoint.pth keeps the optimizer state (to train on)
# shared clusters (docs/reliability.md): a COCO epoch takes about an hour on 8 GPUs, so checkpoint.pth is also
# written every 15 minutes with the position in the epoch (about 1-2 s for 0.5 GB); a restart continues there
checkpoint_every_iters = 0  # 0: off
checkpoint_every_minutes = 15.0  # 0: off
collective_timeout_minutes = 30.0  # a collective waiting longer for a peer fails (torch's process-group timeout)
rank_silence_s = 120.0  # a rank silent this long is named gone and the others stop (util/rank_watch.py)
run_lock_heartbeat_s = 30.0  # output_dir/run.lock heartbeat; another host's lock silent for 3 of these is stale
