"""Default config: FCN-8s on the built-in synthetic dataset, CPU-sized.

    python -m fcn_jax.main --workdir=runs/fcn8s

trains a width-reduced FCN-8s (1/8 of VGG16's channels, same depth, crops and
padding) from scratch on 64x64 synthetic scenes, evaluates and checkpoints
it. See README.md for the measured time and validation mean IU on a 2-core
CPU. The paper-size model is one flag away: --config.width=1.0.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Model: 'fcn32s', 'fcn16s', 'fcn8s', 'fcn8s-atonce' (VGG16) or 'fcn-alexnet'.
  config.model = 'fcn8s'
  # Number of classes; -1 = take it from the dataset's meta data.
  config.num_classes = -1
  # Channel multiplier for every layer (1.0 = the paper's VGG16).
  config.width = 0.125
  # Train the bilinear-initialized upsampling kernels. The reference keeps
  # them fixed; this small from-scratch model segments thin structures
  # better with them learned (val mean IU 0.78 vs 0.73 after 800 steps).
  config.learn_upsampling = True
  # Dropout after fc6 and fc7 (0.5 in the paper; 0 helps small from-scratch models).
  config.dropout_rate = 0.0
  # conv1_1 zero padding (100 in the reference; it makes any input size valid).
  config.input_padding = 100
  # fc6 zero padding (0 in the reference). input_padding=1 with fc6_padding=3
  # is the exact-offset variant without the 100-pixel padding (any input size).
  config.fc6_padding = 0
  # Init of learned upsampling kernels: 'bilinear' (the paper) or 'random'.
  config.upsampling_init = 'bilinear'
  # Computation dtype: 'float32' or 'bfloat16' (parameters stay float32).
  config.dtype = 'float32'
  # Custom-gradient CPU ops (fcn_jax/fast_ops.py): 'auto' = on when JAX runs
  # on the CPU, 'on', or 'off' (plain XLA ops; same function and gradients).
  config.fast_ops = 'auto'

  # Dataset: 'synthetic' (built in, no download); 'voc' (VOCdevkit under
  # data_dir), 'sbd' (SBD train + VOC2011 seg11valid under data_dir), 'voc_dir'
  # (any VOC-layout folder = data_dir), 'nyud', 'siftflow', 'pascal_context'
  # (NYUDv2, SIFT Flow, PASCAL-Context) or 'tfds:<name>' (a TFDS dataset
  # prepared as array_record in data_dir). See docs/datasets.md.
  config.dataset = 'synthetic'
  # Root folder of on-disk datasets ('' for tfds = TFDS's default folder).
  config.data_dir = ''
  # Side of the square synthetic images; for real datasets the side of the
  # random training crops (smaller images are padded first; 0 = whole images).
  config.image_size = 64
  # Synthetic dataset: split sizes and the seed that draws the scenes.
  config.synthetic = ml_collections.ConfigDict()
  config.synthetic.train_size = 4000
  config.synthetic.val_size = 200
  config.synthetic.seed = 0
  # Real datasets: split names ('' = the dataset's usual train / val split).
  config.train_split = ''
  config.val_split = ''
  # tfds only: another TFDS dataset to evaluate on ('' = config.dataset's), e.g.
  # 'voc_segmentation/2011' with val_split='seg11valid'.
  config.val_dataset = ''
  # 'voc' only: which VOCdevkit/VOC<year> folder to read.
  config.voc_year = '2012'
  # 'nyud' only: the network input: 'color', 'hha', 'color-d' (RGB + log
  # depth in one 4-channel conv1_1) or 'color-hha' (two streams, late fusion).
  config.nyud_input = 'color'
  # 'nyud' with nyud_input='color-hha' only: the HHA run to initialize the HHA
  # stream from (config.init_from initializes the color stream).
  config.init_from_hha = ''
  # Mixed-size batches (whole-image training, evaluation) are padded to their
  # largest image rounded up to this multiple, so jit compiles one program per
  # bucket shape, not per image size (1 = exact sizes, as the reference).
  config.pad_multiple = 32
  # > 0: pad every mixed-size batch to this fixed square instead (needed on
  # several hosts, whose batch slices must share a shape; 512 fits VOC).
  config.pad_size = 0
  # Augmentation (all off in the paper's recipe): horizontal flips, and
  # random rescaling by a factor in [random_scale_min, random_scale_max].
  config.random_flip = True
  config.random_scale_min = 1.0
  config.random_scale_max = 1.0
  # Missing or bad image/label files: False = stop with an error naming the
  # file; True = skip it with a warning (it contributes nothing).
  config.skip_bad_examples = False
  # Training input: grain worker processes that read, decode and augment
  # batches (0 = threads of the training process; -1 = auto: 0 for the
  # synthetic data, else half the CPU cores, at most 8), and how many batches
  # each reads ahead. The batches do not depend on either; the iterator's
  # position is saved in every checkpoint.
  config.data_workers = -1
  config.data_prefetch = 2
  # Batches placed on the devices ahead of the step that uses them (a thread
  # reads and copies them while the device computes); also how many steps
  # the host may dispatch ahead of the device.
  config.device_prefetch = 2

  # Global batch size, split evenly over all devices.
  config.batch_size = 8
  # Gradient accumulation (Caffe's iter_size): each step runs batch_size /
  # grad_accum_steps examples at a time and sums their gradients, giving the
  # same update as the whole batch with less memory. 1 = no accumulation.
  config.grad_accum_steps = 1
  # Evaluation batch size (global); -1 = batch_size.
  config.eval_batch_size = -1
  config.num_train_steps = 800

  # Optimizer: 'sgd' (with momentum; the reference), 'adam', or 'adamw' (Adam
  # with decoupled weight decay: config.weight_decay on the same kernels).
  config.optimizer = 'adam'
  config.learning_rate = 3e-3
  # Learning-rate schedule: 'constant' (the reference), 'cosine' decay to 0, or
  # 'poly': lr * (1 - t / T) ** poly_power down to 0 (mmsegmentation's default).
  config.lr_schedule = 'cosine'
  # Exponent of the 'poly' schedule (0.9 in mmsegmentation and DeepLab).
  config.poly_power = 0.9
  # Linear warm-up steps (0 = none).
  config.warmup_steps = 50
  # SGD momentum (0.99 in the reference, with batch 1 and the summed loss).
  config.momentum = 0.9
  # L2 weight decay on convolution kernels only (5e-4 in the reference).
  config.weight_decay = 0.0
  # Learning-rate multiplier of biases (2 in the reference; no decay on them).
  config.bias_lr_mult = 2.0
  # 'sum': the paper's per-pixel summed loss (divided by the batch size);
  # 'mean': averaged over labelled pixels.
  config.loss_normalization = 'mean'

  # Evaluation also reports boundary_mean_iu: mean IU over the pixels within
  # this many pixels of a label boundary (0 = off).
  config.boundary_radius = 3

  # Logging, evaluation and checkpointing intervals, in steps.
  config.log_every_steps = 50
  config.eval_every_steps = 400
  config.checkpoint_every_steps = 400
  # Validation images shown in TensorBoard at every evaluation as input /
  # ground truth / prediction (the first ones of the split; 0 = none).
  config.summary_images = 3
  # Checkpoints kept: the last `keep_checkpoints` plus the best by val mean IU.
  config.keep_checkpoints = 2
  # Largest image decoded (width x height); larger files are refused as
  # decompression bombs. Raise it for real gigapixel images.
  config.max_image_pixels = 89_478_485
  # Multi-process runs: every this many steps the processes agree whether a
  # SIGTERM/SIGINT reached any of them, and then all save and stop at that
  # step (a host-only exchange, no device sync). One process checks every step.
  config.preemption_check_every_steps = 10
  # Non-finite loss or gradient: False = stop with an error (the last good
  # checkpoint stays); True = skip that update and count it (skipped_updates).
  config.skip_nonfinite = False
  # Resume a workdir whose config.json has another model, num_classes,
  # dataset or width (normally an error).
  config.allow_config_change = False
  # Initialize a fresh run from these weights ('' = none): a checkpoint from
  # python -m fcn_jax.convert or an earlier stage's workdir. Layers whose names
  # and shapes match are copied, the others keep their init. Ignored when
  # resuming from the workdir's own checkpoints.
  config.init_from = ''

  config.seed = 0
  # Many seeds in one program (fcn_jax/seeds.py): '' = one run of
  # config.seed; '0,1,2,3' = one independent model per listed seed, vmapped
  # in one compiled train step; a lone count '4' = seeds 0..3.
  config.seeds = ''
  # How the seeds share the program: 'auto' = 'loop' on CPU (the ordinary
  # step applied to each seed in turn), 'vmap' elsewhere (one vmapped step).
  config.seed_program = 'auto'
  # The vmapped program's layout on several devices: 'mesh' = a ('data',
  # 'seed') mesh (every device runs some of the seeds on a larger slice of
  # their batches), 'batch' = seeds folded into the batch sharding (every
  # device runs every seed on its slice); docs/research_tools.md.
  config.seed_sharding = 'mesh'
  return config


def get_tiny_config() -> ml_collections.ConfigDict:
  """A seconds-long variant for tests and smoke runs (same code paths)."""
  config = get_config()
  config.width = 1 / 32
  config.image_size = 24
  config.synthetic.train_size = 64
  config.synthetic.val_size = 8
  config.batch_size = 4
  config.num_train_steps = 6
  # Constant rate: a run stopped at step k and resumed (with any
  # num_train_steps) then follows exactly the same updates.
  config.lr_schedule = 'constant'
  config.warmup_steps = 0
  config.log_every_steps = 2
  config.eval_every_steps = 3
  config.checkpoint_every_steps = 3
  return config
