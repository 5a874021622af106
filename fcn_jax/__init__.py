"""fcn_jax: Fully Convolutional Networks (Long, Shelhamer, Darrell) in JAX/Flax.

Code map, one line per module (docs/ is the manual):

The model
  models          FCN-32s/16s/8s/8s-atonce on VGG16: geometry, crops, skips; create_model(config)
  layers          Caffe layers flax.linen lacks: bilinear Upsample, ceil-mode max pool, crop, fuse
  alexnet         FCN-AlexNet, the paper's second backbone
  multi_models    several heads (SIFT Flow) or input streams (NYUDv2 RGB-HHA) on VGG16 trunks
  architecture    the model settings a parameter tree's names and shapes imply
  fast_ops        custom-gradient conv, fc6 and max pool for XLA:CPU, chosen per layer and batch
  losses          per-pixel softmax cross-entropy with the ignore label
  metrics         the paper's four scores and boundary mean IU from one confusion matrix

Training
  main            `python -m fcn_jax.main`: flags and config -> train.train_and_evaluate
  configs/        configs as data: default.py (every key), tiny.py, the reference's recipes
  config_checks   one-line errors for config values a run cannot use
  train           pure jit-compiled train and eval steps and the training loop
  optimizer       SGD / Adam / AdamW, L2 on kernels, bias lr multiplier, lr schedule
  grad_accum      Caffe's iter_size: a batch's gradient from micro-batches
  tasks           what a dataset asks beyond VOC's single RGB head (losses, scores, models)
  seeds           many seeds trained in one compiled program (config.seeds)
  seed_sharding   the seeds program on the devices: a 'seed' mesh axis or seeds in the batch sharding
  sharding        the device mesh and data-parallel shardings
  prefetch        batches placed on the devices ahead of the step; metrics fetched at log steps
  distributed     joining the processes of a multi-host run
  checkpointing   Orbax checkpoints of the train state and data position; restore that survives damage
  fault_tolerance signals, workdir lock, resume checks, non-finite steps, preemption across hosts
  workdir         the run folder: config.json, checkpoints/, best/latest/step, params-only restore
  dataset_info    <workdir>/dataset_info.json: class names, ignore label, palette
  writers         metrics.jsonl and TensorBoard events
  summaries       TensorBoard pictures at each evaluation

Data
  input_pipeline  datasets -> preprocessed, padded, batched arrays through grain
  data/           datasets: synthetic, voc, sbd, nyud, siftflow, pascal_context, tfds_sources,
                  tfds_builders; decode (the one image and label reader), transforms, mat5,
                  file_source, prepare (TFDS data without TensorFlow)

Using a trained model
  inference       the notebook API: load() and Segmenter (buckets, TTA, sliding windows)
  tiling          bucket shapes, sliding-window tiles and resizing behind Segmenter
  evaluate        `python -m fcn_jax.evaluate`: scores and calibration on a whole split
  predict         `python -m fcn_jax.predict`: label maps, overlays, probabilities
  export          `python -m fcn_jax.export`: a serialized jax.export artifact
  visualize       palette PNGs, overlays, heatmaps, confusion pictures
  calibration     expected calibration error and reliability diagrams
  ceiling         `python -m fcn_jax.ceiling`: the output-stride upper bound (Appendix A)
  heatmap         `python -m fcn_jax.heatmap`: the convolutionalized classifier's class map

Weights
  convert         `python -m fcn_jax.convert`: .pth / .caffemodel -> fcn_jax parameters
  pth             the torch-free, bounded .pth reader (no code-running unpickling)
  surgery         net surgery: PyTorch-layout weights -> fcn_jax parameters, init_from
  caffemodel      the bounded .caffemodel reader (no Caffe)
  caffe_models    the reference's released models and their layer tables
  reproduce       `python -m fcn_jax.reproduce`: released models beside the paper's scores

Tools
  benchmark       `python -m fcn_jax.benchmark`: speed and memory against PyTorch
  benchmark_runners  the fcn_jax and PyTorch FCN-8s the benchmark times
  cli             what every command shares: common flags, UserError as one line
  errors          UserError, the base of every error a user can fix
"""
