# Data augmentation scales shared by the DINO COCO configs (DINO's values).
# Train: short side drawn from data_aug_scales (long side <= data_aug_max_size), or
# resize to data_aug_scales2_resize -> random crop in data_aug_scales2_crop -> resize.
# Val: short side max(data_aug_scales), long side <= data_aug_max_size.
data_aug_scales = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]
data_aug_max_size = 1333
data_aug_scales2_resize = [400, 500, 600]
data_aug_scales2_crop = [384, 600]
data_aug_scale_overlap = None
