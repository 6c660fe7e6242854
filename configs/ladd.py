"""LADD distillation configs: `ladd-jax train --config configs/ladd.py:VARIANT --workdir W [--config.key=value]`.

VARIANT: "sd3-medium", "sd3.5-large", "sd3.5-medium" (1024^2, the paper's defaults), "tiny" (a CPU run in
seconds, batch 4: tests) or "toy" (the toy world's distillation that `ladd-jax demo` runs on a CPU in minutes).
Values marked (unconfirmed) are not stated in the LADD paper; they are the defaults we chose, and options.
"""

import ml_collections

from ladd_jax.convert.lora import ATTENTION_AND_MLP

# variant -> (global batch, teacher blocks used as discriminator features: every `stride`-th block)
_VARIANTS = {
    "sd3-medium": dict(batch_size=256, feature_stride=2, dtype="bfloat16", remat_policy="dots_saveable"),
    "sd3.5-medium": dict(batch_size=256, feature_stride=2, dtype="bfloat16", remat_policy="dots_saveable"),
    "sd3.5-large": dict(batch_size=256, feature_stride=4, dtype="bfloat16", remat_policy="dots_saveable"),
    "tiny": dict(batch_size=4, feature_stride=1, dtype="float32", remat_policy="none"),
    "toy": dict(batch_size=16, feature_stride=1, dtype="float32", remat_policy="none"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "tiny"
    if variant not in _VARIANTS:
        raise ValueError(f"unknown LADD config variant {variant!r}; choose one of {sorted(_VARIANTS)}")
    v = _VARIANTS[variant]
    small = variant in ("tiny", "toy")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.method = "ladd"  # the trainer's other methods (ADD, LCM, Diffusion2GAN) have their own config files
    c.teacher = ""  # a diffusers-layout SD3 pipeline folder (transformer/, vae/, text encoders, ...)
    c.data = ""  # a `ladd-jax synth` (or `encode-real`) output folder
    # A conditioned teacher (inpainting, editing: more input channels than latent ones): the data's "cond" latents
    # go to student and teacher alike, concatenated to every input (not LCM's yet).
    c.conditioned = False
    c.seed = 0
    c.total_steps = 10_000  # LADD: 10k iterations
    c.batch_size = v["batch_size"]  # global, over all processes (unconfirmed)

    # Student: initialised from the teacher; `layers` keeps a subset of the teacher's blocks (empty = all), or
    # repeats some for a deeper student (repeats start as the identity, so it starts as the teacher).
    c.student = ml_collections.ConfigDict()
    # "teacher", "random", or a folder with a saved student of the same architecture (e.g. a regression-pretrained one)
    c.student.init = "teacher"
    c.student.layers = ()
    # A student this many times the teacher's width (an integer): every channel copied, so it starts as the
    # teacher's function (models/net2wider.py); the paper finds the student's size its most important factor.
    c.student.width_factor = 1
    # Relative noise on the copies' input weights (function unchanged): without it equal copies learn alike.
    c.student.width_noise = 0.1
    # Student timesteps and their probabilities; the warm-up probabilities hold for the first `warmup_steps`.
    c.student.timesteps = (1.0, 0.75, 0.5, 0.25)
    c.student.probs = (0.7, 0.1, 0.1, 0.1)
    c.student.warmup_probs = (0.0, 0.0, 0.5, 0.5)
    c.student.warmup_steps = 500
    c.student.shift = ml_collections.config_dict.placeholder(float)  # apply SD3's shift to them (unconfirmed)

    # LoRA student (rank > 0): only low-rank adapters on `targets` train; the student's weights (the teacher's)
    # stay frozen. `ladd-jax export --lora` writes the adapters as the file diffusers' load_lora_weights reads.
    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 0  # 0: the whole student trains
    c.lora.alpha = ml_collections.config_dict.placeholder(float)  # updates scaled by alpha / rank; None: = rank
    # diffusers' module names (peft's target_modules): every attention and MLP projection.
    c.lora.targets = ATTENTION_AND_MLP
    # The frozen base on device: bfloat16 at SD3 sizes halves its memory (the merged kernels are float32).
    c.lora.base_dtype = "float32" if small else "bfloat16"

    # Discriminator: heads on the frozen teacher's block features at t_hat ~ logit-normal(m, s).
    c.disc = ml_collections.ConfigDict()
    c.disc.feature_layers = ()  # explicit block indices; empty = every `feature_stride`-th block
    c.disc.feature_stride = v["feature_stride"]
    c.disc.hidden = 64 if small else 256
    c.disc.num_blocks = 2
    c.disc.cond_dim = 64 if small else 256
    c.disc.norm_groups = 8 if small else 32
    c.disc.output_init = "zeros"  # "normal": random output layers (the frozen-heads control needs them)
    c.disc.train = True  # False: no D updates, the heads stay at their initialisation (the control run)
    # The CFG scale of the features the heads read: f_empty + scale * (f_text - f_empty) per block, real and fake
    # alike (1: the text-conditioned features, as LADD). Above 1 it amplifies what the prompt changes in the
    # teacher's features, for heads that judge a sample against its prompt; a teacher pass of twice the batch. In the
    # toy world 3-5 lifts the 4-step student's alignment by 0.11-0.14 and not the 1-step one's, whose FD it raises
    # (alignment notes, "Heads on guided features"); so 1 (unconfirmed at SD3 scale).
    c.disc.feature_cfg = 1.0
    # The scale for the pairs whose student sample came from t = 1 (the 1-step sampler's); None: feature_cfg.
    c.disc.feature_cfg_t1 = ml_collections.config_dict.placeholder(float)
    # The text the discriminator side reads (the teacher's features for the heads, and the heads' conditioning):
    # "caption" (LADD: each sample's own), or "empty" (the empty prompt's: an unconditional discriminator, which can
    # judge realism but not whether a sample shows its caption; a control for where the student's prompt alignment
    # comes from: alignment notes, "An unconditional discriminator").
    c.disc.text = "caption"
    c.t_hat_mean = 1.0
    c.t_hat_std = 1.0

    # Objective.
    c.adv_weight = 1.0  # weight of the adversarial term in the student's loss; 0: no heads, no D step
    c.loss = "hinge"  # or "non_saturating" (hinge: ADD's choice; unconfirmed for LADD)
    c.d_steps = 1  # D updates per G update, all on the step's batch (the D metrics are logged before them)
    # Each D update after the first re-noises the step's real latents and student samples afresh (new t_hat and
    # noise; two teacher passes each, no gradient), so the heads cannot fit one draw's noise, only what survives it.
    # Off: in the toy world it left the heads' accuracy on fresh batches and the students within the seed spread
    # (alignment notes, "Fresh noise for each D update, and heads trained before the student"), for 1.2x the time.
    c.d_renoise = False
    c.train_student = True  # False: no G updates, the heads alone against the fixed student (can they learn?)
    c.r1_gamma = 0.0  # ADD uses 1e-5 on the heads' inputs
    c.misaligned_weight = 0.0  # >0: real latents with text they do not match as extra fakes (SANA-Sprint's pairs)
    # Their text: "batch" (the next sample's: SANA-Sprint's random pairs) or "records" (a caption that differs from
    # the latent's in one detail, stored by `ladd-jax synth --mismatch-column`: hard negatives, which the heads can
    # only reject by reading that detail).
    c.misaligned_source = "batch"
    c.distill_weight = 0.0  # >0: ADD-style distillation loss to the teacher's denoised estimate (ADD: 2.5)
    # The CFG scale of that estimate (1: the teacher unguided, as ADD). Above 1 it pulls the student toward what a
    # guided teacher draws for the prompt: SDS with guidance (DreamFusion), DMD's guided real score, for alignment.
    c.distill_cfg = 1.0
    # >0: DMD's regression anchor (Yin et al. 2024): the student's 1-step image of each latent's stored noise
    # (`ladd-jax synth`'s ODE pairs) regressed on that latent, at this weight, to keep a distribution-matching
    # student from crowding its samples together; a student pass of its own per step. 0: as LADD and DMD2.
    c.anchor_weight = 0.0
    # How that weight moves over the run: "constant", or "cosine" (from anchor_weight to 0 at total_steps: the
    # regression shapes the early student, the adversarial / DMD terms alone finish it; with the cheaper DMD mix a
    # constant weight trades the 1-step alignment for FD, and switching it off halfway gave the FD back).
    c.anchor_decay = "constant"
    # Its distance: "mse", or "perceptual" (DMD's LPIPS: the ensembled latent perceptual distance of configs/d2g.py's
    # lpips loss, with `perceptual`'s settings and the latent feature network `features`).
    c.anchor_distance = "mse"
    # A frozen feature network folder: ADD's pixel features (configs/add.py), or the latent perceptual distance's
    # network (d2g's lpips loss, the perceptual anchor; the toy world's: `python -m ladd_jax.toy.latent_features`).
    c.features = ""
    # The latent perceptual distance's ensemble (Diffusion2GAN's E-LatentLPIPS): random augmentations, each applied
    # alike to both compared latents, the distance averaged over the draws.
    c.perceptual = ml_collections.ConfigDict()
    c.perceptual.num_draws = 4  # augmentation draws per distance (the ensemble)
    c.perceptual.augment = ml_collections.ConfigDict()
    c.perceptual.augment.translate = 2  # latent pixels
    c.perceptual.augment.cutout = 0.25  # fraction of each side
    c.perceptual.augment.flip = False  # captions name left and right: a flip would change what both inputs show

    # Optimisers (AdamW, linear warm-up then constant; unconfirmed).
    c.g_lr = 1e-5
    c.d_lr = 1e-5
    # b1 = 0 (no momentum) in the adversarial game: in the toy world b1 0.5 (both networks, or the student alone)
    # gave the same students within the seed spread, and 0.9 for both let the heads win (accuracy 0.8) and stalled
    # the student (alignment notes, "Adam's b1, and DMD within the demo's minutes").
    c.b1 = 0.0
    c.d_b1 = ml_collections.config_dict.placeholder(float)  # the D phase's own b1 (heads, DMD's fake score); None: b1
    c.b2 = 0.99
    c.weight_decay = 0.0
    c.lr_warmup_steps = 100
    c.lr_decay = "constant"  # or "cosine" (to lr * lr_final_fraction at total_steps)
    c.lr_final_fraction = 0.1
    c.lr_decay_steps = ml_collections.config_dict.placeholder(int)  # the cosine's horizon; None: total_steps
    c.grad_clip = 1.0
    c.ema_decay = 0.999

    # Computation and sharding.
    c.dtype = v["dtype"]  # compute dtype of teacher, student and heads; params stay float32
    # The frozen teacher's params on device: bfloat16 at SD3 sizes halves its memory (it is never updated, and
    # its matmuls run in bfloat16 anyway); float32 for the small variants, whose tests compare exact numbers.
    c.teacher_dtype = "float32" if small else "bfloat16"
    c.remat_policy = v["remat_policy"]  # the student's blocks
    # The teacher's blocks (the G step backpropagates through them); None: the same as remat_policy.
    c.teacher_remat_policy = ml_collections.config_dict.placeholder(str)
    # Teacher and student alike: None lets jax choose (cuDNN flash on GPUs that have it); "blockwise" never holds
    # the [L, L] attention matrix (any accelerator, and honest XLA:CPU memory plans for `ladd-jax aot`).
    c.attention_impl = ml_collections.config_dict.placeholder(str)
    c.attention_block_size = 512
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # State parts kept in host memory between steps and brought to the device only for their update: "ema" (the
    # student's EMA) and "g_opt" (the student's Adam moments, twice its params) after the backward pass has freed its
    # activations, "d_opt" (the heads', small) for the D step(s). Costs a host<->device copy of each per step.
    c.offload = ()

    # Loop.
    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.restore_step = ml_collections.config_dict.placeholder(int)  # resume from this step instead of the latest
    c.eval_every = 0  # steps between calls of train_and_evaluate's `evaluate` hook, when one is given (0: never)
    c.sample_every = 1000  # 0: no sample grids
    c.sample_prompts = ("a photo of a cat", "a red sports car on a mountain road", "an astronaut riding a horse")
    c.sample_steps = (1, 2, 4)  # student steps shown beside the teacher
    c.teacher_sample_steps = 28
    c.teacher_cfg = 7.0
    c.max_sequence_length = 256  # T5 tokens for the sample prompts

    if variant == "tiny":
        c.total_steps = 20
        c.student.warmup_steps = 5
        c.lr_warmup_steps = 5
        c.g_lr = c.d_lr = 1e-4
        c.ema_decay = 0.9
        c.log_every = 5
        c.checkpoint_every = 10
        c.sample_every = 0
        c.sample_prompts = ("a small red circle", "a large blue square above a small green triangle")
        c.teacher_sample_steps = 20
        c.teacher_cfg = 3.0
        c.max_sequence_length = 16
    if variant == "toy":  # a 4-block, 64x64 (16x16 latent) teacher distilled in a few CPU minutes
        # Game settings measured with launch/toy_ladd_sweep.py (200 steps each, README "Tuning the game").
        # 150: the 300-step demo's held-out curve was flat from step 125-150 on (1-step FD 218, 213 at steps 125,
        # 150; 213-258 after), and the run is deterministic, so the 150-step student is that run's at step 150
        # (table: 1-step FD 144 / 175 against 134 / 193 at 300); it halves LADD's and the control's minutes.
        c.total_steps = 150
        c.student.warmup_steps = 4
        c.lr_warmup_steps = 2
        c.g_lr, c.d_lr = 1e-4, 1e-3  # heads learn 10x faster: with equal rates they barely move in 150 steps
        # 4 D updates per G update (FastGen's ratio; here all on the step's one batch). Measured as the heads meet
        # each batch (d_acc), they read 0.51-0.57 in the demo, against 0.50 throughout with 1 update and 0.51-0.58
        # with 8, for students within the seed spread of one another (alignment notes, "The heads' accuracy, before
        # and after their updates"): 4 keeps a game that can be read. g_lr 3e-5 gave the same FD after 200 steps.
        c.d_steps = 4
        # t_hat ~ logit-normal(1, 1): the paper's value, and where the toy teacher was trained (logit-normal(1.1,
        # 1)); the student's alignment was 0.11 against 0.09 at m = 0 (within the noise of 128 prompts).
        c.t_hat_mean = 1.0
        c.ema_decay = 0.95
        c.log_every = 5
        c.checkpoint_every = 50
        c.sample_every = 0  # the demo draws its own grids
        c.teacher_sample_steps, c.teacher_cfg = 20, 3.0  # the toy teacher's sampling (the demo's synth settings)
        c.max_sequence_length = 16
    return c
