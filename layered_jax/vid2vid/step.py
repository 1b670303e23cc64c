"""One vid2vid training step on a chunk of frames: generation, every loss, and Adam for G, D and the temporal Ds.

Pure functions over explicit state, for a training loop to jit or pmap:

  models = build_models(options)
  state = create_state(jax.random.PRNGKey(0), models, options)
  carry = initial_carry(batch, options, models.generator)   # the first chunk of a clip
  step = jax.jit(make_train_step(models, options), static_argnames='raw_only')
  state, carry, metrics = step(state, batch, carry, vgg_variables, raw_only=options.no_first_img)
  ... next chunk: step(state, next_batch, carry, vgg_variables, raw_only=False)

A chunk of T generated frames (per device; the names of layered_jax.vid2vid.input_pipeline's batches):
  batch['inputs']  [B, tG-1+T, H, W, input_nc]  inputs (labels) of the tG-1 frames before the chunk, then the chunk's
  batch['frames']  [B, tG-1+T, H, W, 3]         the real frames, same frames, in [-1, 1]
  batch['flow']    [B, T, H, W, 2]              reference flow into each chunk frame from the one before, in
                                                pixels: frames[t] ~ flow_warp(frames[t-1], flow[t])
  batch['conf']    [B, T, H, W, 1]              its confidence, 0 or 1
  batch['flow_d<s>'] [B, T, H, W, 2]            optional, s >= 1: the flow into each frame from tD^s frames
                                                before, for temporal D s (else chained from the consecutive flows)
The carry between chunks holds the generator's previous outputs per scale, the
last generated frame and the temporal discriminators' history of real and
generated frames and flows: always Options.history frames (zeros at a clip's
start) and `count`, how many of them are real history. A temporal group that
reaches into the zeros is masked out, so every chunk of every clip, whatever
n_frames_total, runs the same compiled program; so does a clip's first chunk,
whose `raw_only` flag (no_first_img) may be a traced boolean.
"""

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import flax.struct as struct
import jax
import jax.numpy as jnp
import optax
from jax import lax

from layered_jax.models.layers import stack_channels
from layered_jax.vid2vid import losses
from layered_jax.vid2vid.models import FLOW_SCALE, VGG19, Generator, MultiscaleDiscriminator
from layered_jax.vid2vid.warp import flow_warp

Array = jax.Array
Carry = Dict[str, Any]
sg = lax.stop_gradient
FAST_COMPILE = {'xla_backend_optimization_level': 0}  # for programs run once: compile fast, run slower


@dataclasses.dataclass(frozen=True)
class Options:
  """The reference's options that shape the networks and losses (its option names; vid2vid-spec 2-5)."""
  input_nc: int = 6  # label channels per frame: pose 6, one-hot label_nc (+1 instance edge), edge maps ...
  output_nc: int = 3
  ngf: int = 128
  n_downsample_G: int = 3
  n_blocks: int = 9
  n_blocks_local: int = 3
  n_scales_spatial: int = 1
  n_frames_G: int = 3
  fg: bool = False
  fg_labels: Tuple[int, ...] = (26,)  # label channels whose union is the foreground mask
  no_flow: bool = False
  norm: str = 'batch'
  sync_batch_norm: bool = False  # statistics over all devices (the reference's are per GPU)
  ndf: int = 64
  n_layers_D: int = 3
  num_D: int = 2
  n_frames_D: int = 3
  n_scales_temporal: int = 2
  lambda_feat: float = 10.
  lambda_F: float = 10.
  lambda_T: float = 10.
  lambda_multiscale_l1: float = 0.  # not in the reference: an image term for runs without VGG19
  no_vgg: bool = False
  vgg_normalize: bool = False  # the reference feeds [-1, 1] images to VGG19 without ImageNet normalisation
  no_ganFeat: bool = False
  no_first_img: bool = False
  lr: float = 2e-4
  beta1: float = 0.5
  TTUR: bool = False
  dtype: str = 'float32'  # compute dtype; parameters stay float32

  @classmethod
  def from_config(cls, config: Any) -> 'Options':
    """The fields of a config (any mapping or ConfigDict) that name an option; the rest keep their defaults."""
    values = {f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config}
    if 'fg_labels' in values:
      values['fg_labels'] = tuple(values['fg_labels'])
    return cls(**values)

  @property
  def history(self) -> int:
    """Frames the temporal discriminators need from earlier chunks: tD^(S_T-1) (tD-1) (0 without them)."""
    if not self.n_scales_temporal:
      return 0
    return self.n_frames_D ** (self.n_scales_temporal - 1) * (self.n_frames_D - 1)


@dataclasses.dataclass(frozen=True)
class Models:
  generator: Generator
  discriminator: MultiscaleDiscriminator  # on labels + image
  temporal: Tuple[MultiscaleDiscriminator, ...]  # one per temporal scale, on tD frames + (tD-1) flows
  vgg: VGG19


def build_models(options: Options, axis_name: Optional[str] = None) -> Models:
  """The networks of `options`; BatchNorm statistics span `axis_name` when options.sync_batch_norm."""
  o = options
  dtype = jnp.dtype(o.dtype)
  bn_axis = axis_name if o.sync_batch_norm else None
  generator = Generator(input_nc=o.input_nc, n_frames_G=o.n_frames_G, ngf=o.ngf, n_downsample=o.n_downsample_G,
                        n_blocks=o.n_blocks, n_blocks_local=o.n_blocks_local, n_scales=o.n_scales_spatial,
                        output_nc=o.output_nc, fg=o.fg, no_flow=o.no_flow, norm=o.norm, axis_name=bn_axis, dtype=dtype)
  disc = lambda: MultiscaleDiscriminator(ndf=o.ndf, n_layers=o.n_layers_D, num_D=o.num_D, norm=o.norm,
                                        axis_name=bn_axis, dtype=dtype)
  return Models(generator, disc(), tuple(disc() for _ in range(o.n_scales_temporal)), VGG19(dtype))


@struct.dataclass
class State:
  step: Array
  params: Dict[str, Any]  # {'G': ..., 'D': ..., 'D_T': (scale 0, scale 1, ...)}
  opt_state: Dict[str, Any]
  tx: Dict[str, optax.GradientTransformation] = struct.field(pytree_node=False)


LearningRate = Union[float, Callable[[Array], Array]]


def make_optimizers(options: Options, learning_rate: Optional[LearningRate] = None) -> Dict[str, Any]:
  """Adam for G, D and the temporal Ds as the reference sets them (TTUR: G lr/2, D lr*2, betas (0, 0.9)).

  learning_rate: options.lr or a schedule of the step count (chunks), e.g. the
  reference's constant-then-linear decay.
  """
  lr = options.lr if learning_rate is None else learning_rate
  scaled = lambda factor: (lambda count: lr(count) * factor) if callable(lr) else lr * factor
  # Each on one flat vector: per-leaf updates of ~200 small arrays made a fifth of the step's XLA program.
  adam = lambda lr, b1, b2: optax.flatten(optax.adam(lr, b1=b1, b2=b2))
  if options.TTUR:
    g = adam(scaled(0.5), 0., 0.9)
    d = adam(scaled(2.), 0., 0.9)
  else:
    g = d = adam(lr, options.beta1, 0.999)
  return {'G': g, 'D': d, 'D_T': adam(lr, options.beta1, 0.999)}


def create_state(rng: Array, models: Models, options: Options, learning_rate: Optional[LearningRate] = None,
                 params: Optional[Dict[str, Any]] = None) -> State:
  """Optimizer states around `params` ({'G', 'D', 'D_T'}), or around freshly initialised networks (the reference's init)."""
  o = options
  if params is None:
    size = 2 ** (o.n_downsample_G + o.n_scales_spatial - 1)
    keys = jax.random.split(rng, 2 + len(models.temporal))
    image_in = jnp.zeros((1, size, size, o.input_nc + o.output_nc))
    temporal_in = jnp.zeros((1, size, size, o.output_nc * o.n_frames_D + 2 * (o.n_frames_D - 1)))
    init = jax.jit(lambda keys: {
        'G': models.generator.init(keys[0], *models.generator.example_inputs())['params'],
        'D': models.discriminator.init(keys[1], image_in)['params'],
        'D_T': tuple(d.init(k, temporal_in)['params'] for d, k in zip(models.temporal, keys[2:]))})
    # Run once: XLA:CPU's optimisations took 30 s of its 35-s compile here (a tiny network), for nothing.
    params = init.lower(keys).compile(compiler_options=FAST_COMPILE)(keys)
  tx = make_optimizers(options, learning_rate)
  opt_state = {'G': tx['G'].init(params['G']), 'D': tx['D'].init(params['D']),
               'D_T': tuple(tx['D_T'].init(p) for p in params['D_T'])}
  return State(jnp.zeros((), jnp.int32), params, opt_state, tx)


def stack_frames(x: Array) -> Array:
  """[B, n, H, W, C] -> [B, H, W, n*C], oldest frame first (the reference's view(B, -1, H, W))."""
  b, n, h, w, c = x.shape
  return jnp.moveaxis(x, 1, 3).reshape(b, h, w, n * c)


def fg_mask(labels: Array, fg_labels: Sequence[int]) -> Array:
  """The union of the foreground label channels, [..., H, W, 1] clipped to [0, 1]."""
  return jnp.clip(sum(labels[..., i:i + 1] for i in fg_labels), 0., 1.)


def generate_chunk(generator: Generator, g_params: Any, labels: Array, prevs: Sequence[Array],
                   fg_labels: Sequence[int] = (), use_raw_only: bool = False,
                   unroll: Union[int, bool] = True) -> Tuple[Dict[str, Array], List[Array]]:
  """Generates T frames one after another with lax.scan, each from the last tG-1 outputs (no gradient through them).

  labels [B, tG-1+T, H, W, input_nc]; prevs[s] [B, tG-1, Hs, Ws, 3] per scale, coarsest
  first (Generator.pyramid of the real frames, or zeros). Returns the finest scale's
  {'final', 'raw', 'flow', 'weight'} stacked [B, T, ...] (flow and weight absent with
  no_flow) and the new prevs. use_raw_only: every frame is the raw output (the
  reference's first chunk with no_first_img); a traced flag, or one per frame [T].
  unroll: lax.scan's. A training chunk (a few frames) is unrolled whole: XLA:CPU runs the
  convolutions and their gradients inside a while loop several times slower (the small
  benchmark's step without VGG19: 1.50 s as a loop, 0.55 s unrolled). A whole clip
  (generate.render) is a loop, whose compile time does not grow with its length.
  """
  t_g = prevs[0].shape[1] + 1
  n_frames = labels.shape[1] - (t_g - 1)
  if n_frames < 1:
    raise ValueError(f'labels hold {labels.shape[1]} frames: need the {t_g - 1} before the chunk and at least one')
  label_pyramid = generator.pyramid(labels)
  if not isinstance(use_raw_only, bool):  # a traced flag, or one per frame [T]
    use_raw_only = jnp.broadcast_to(jnp.asarray(use_raw_only, bool), (n_frames,))

  def frame(prevs, t):
    windows = [lax.dynamic_slice_in_dim(level, t, t_g, axis=1) for level in label_pyramid]
    masks = [fg_mask(w[:, -1], fg_labels) for w in windows] if generator.fg else None
    outs = generator.apply({'params': g_params}, [stack_frames(w) for w in windows],
                           [stack_frames(p) for p in prevs], masks,
                           use_raw_only if isinstance(use_raw_only, bool) else use_raw_only[t])
    prevs = [jnp.concatenate([p[:, 1:], sg(o['final'])[:, None].astype(p.dtype)], axis=1) if t_g > 1 else p
             for p, o in zip(prevs, outs)]
    return prevs, {k: v for k, v in outs[-1].items() if k in ('final', 'raw', 'flow', 'weight') and v is not None}

  prevs, frames = lax.scan(frame, list(prevs), jnp.arange(n_frames), unroll=unroll)
  return {k: jnp.moveaxis(v, 0, 1) for k, v in frames.items()}, prevs


def initial_carry(batch: Dict[str, Array], options: Options, generator: Generator) -> Carry:
  """The carry for a clip's first chunk: real previous frames (zeros with no_first_img) and an empty history
  (Options.history frames of zeros, count 0)."""
  t_g = options.n_frames_G
  frames = batch['frames']
  first = frames[:, :t_g - 1]
  if options.no_first_img:
    first = jnp.zeros_like(first)
  empty = lambda c: jnp.zeros(frames.shape[:1] + (options.history,) + frames.shape[2:4] + (c,), frames.dtype)
  history = {'real': empty(3), 'fake': empty(3), 'flow': empty(2)}
  history.update({key: empty(2) for key in batch if key.startswith('flow_d')})
  return {'prev': generator.pyramid(first), 'last': frames[:, t_g - 2], 'history': history,
          'count': jnp.zeros((), jnp.int32)}


def group_validity(options: Options, n_new: int, count: Array, scale: int) -> Tuple[List[Tuple[int, ...]], Array]:
  """The groups of temporal D `scale` over history + n_new frames, and which of them hold only real history:
  a group is valid when it starts at or after the first of the `count` real history frames."""
  keep = options.history
  groups = temporal_groups(keep + n_new, n_new, options.n_frames_D, scale)
  starts = jnp.array([g[0] for g in groups], jnp.int32)
  return groups, starts >= keep - count


def temporal_groups(length: int, n_new: int, t_d: int, scale: int) -> List[Tuple[int, ...]]:
  """Frame indices of each group of tD frames, tD^scale apart, seen by temporal D `scale`.

  The sequence holds `length` frames, the last n_new of them new; groups end at the
  last frame, tD frames earlier, ..., while they end on a new frame (the reference's
  get_skipped_frames).
  """
  step = t_d ** scale
  span = step * (t_d - 1)
  n = min(length - span, n_new)
  return [tuple(range(length - 1 - t - span, length - t, step)) for t in range(0, max(n, 0), t_d)]


def compose_flows(flows: Array, start: int, end: int) -> Array:
  """The flow from frame `start` to frame `end` (> start) from consecutive flows [B, L, H, W, 2] (flows[:, j]: j-1 -> j).

  Backward flows chain as F = f_end + f_{end-1}(x + f_end(x)) + ...: the reference
  runs FlowNet2 on the skipped frames instead.
  """
  total = flows[:, end]
  for j in range(end - 1, start, -1):
    total = total + flow_warp(flows[:, j], total)
  return total


def temporal_inputs(frames: Array, flows: Dict[str, Array], groups: Sequence[Tuple[int, ...]], scale: int) -> Array:
  """Each group's frames (3 tD channels, oldest first) and the flows between them / 20, groups folded into the batch.

  flows['flow'] [B, L, H, W, 2] holds the flow into each frame from the one before;
  flows['flow_d<scale>'], when present, the flow from tD^scale frames before (else
  chained from the consecutive ones).
  """
  skip = flows['flow'] if scale == 0 else flows.get(f'flow_d{scale}')
  inputs = []
  for group in groups:
    between = [(skip[:, b] if skip is not None else compose_flows(flows['flow'], a, b)) / FLOW_SCALE
               for a, b in zip(group[:-1], group[1:])]
    inputs.append(stack_channels([stack_frames(frames[:, list(group)])] + between))
  return jnp.concatenate(inputs, axis=0)


def _split_gradients(apply: Callable[[Any, Array], Any], params: Any, x: Array) -> Tuple[Any, Any]:
  """(apply(params, x) seen by D's loss, the same seen by G's), from one forward pass.

  The first copy's gradient reaches only params, the second's only x: what apply(params, sg(x)) and
  apply(sg(params), x) give, without running the discriminator twice.
  """

  @jax.custom_vjp
  def views(params, x):
    out = apply(params, x)
    return out, out

  def forward(params, x):
    out, pullback = jax.vjp(apply, params, x)
    return (out, out), pullback

  def backward(pullback, cotangents):
    for_d, for_g = cotangents
    return pullback(for_d)[0], pullback(for_g)[1]

  views.defvjp(forward, backward)
  return views(params, x)


def _gan_terms(disc, params, real_in: Array, fakes: Sequence[Array], options: Options, real_repeats: int):
  """(D_real, D_fake, G_GAN, G_GAN_Feat) of one discriminator; each fake is scored on its own batch.

  D's terms reach only D's parameters (fakes stopped); G's reach only the fakes (D stopped).
  """
  pred_real = disc.apply({'params': params}, real_in)
  d_real = real_repeats * losses.lsgan(pred_real, True)
  d_fake = g_gan = g_feat = 0.
  for fake in fakes:
    for_d, pred_fake = _split_gradients(lambda p, x: disc.apply({'params': p}, x), params, fake)
    d_fake = d_fake + losses.lsgan(for_d, False)
    g_gan = g_gan + losses.lsgan(pred_fake, True)
    if not options.no_ganFeat:
      g_feat = g_feat + losses.feature_matching(pred_fake, pred_real, options.n_layers_D, options.num_D,
                                                options.lambda_feat)
  return d_real, d_fake, g_gan, g_feat


def chunk_losses(params: Dict[str, Any], batch: Dict[str, Array], carry: Carry, vgg_variables: Optional[Any],
                 models: Models, options: Options, raw_only: bool = False):
  """(sum of the G, D and temporal D losses, (terms, new carry)); each network's gradient is its own loss's."""
  o = options
  t_g = o.n_frames_G
  fg_labels = o.fg_labels if o.fg else ()
  gen, prevs = generate_chunk(models.generator, params['G'], batch['inputs'], carry['prev'], fg_labels, raw_only)
  final, raw = gen['final'], gen['raw']
  fold = lambda x: x.reshape((-1,) + x.shape[2:])  # [B, T, ...] -> [B*T, ...], as the reference's reshape
  real = batch['frames'][:, t_g - 1:]
  real_prev = batch['frames'][:, t_g - 2:-1]
  labels = batch['inputs'][:, t_g - 1:]
  flow_ref, conf = fold(batch['flow']), fold(batch['conf'])
  zero = jnp.zeros((), jnp.float32)
  terms = {}

  if 'flow' in gen:
    flow, weight = fold(gen['flow']), fold(gen['weight'])
    terms['F_Flow'] = losses.masked_l1(flow, flow_ref, conf) * o.lambda_F / 2 ** (o.n_scales_spatial - 1)
    terms['F_Warp'] = losses.masked_l1(flow_warp(fold(real_prev), flow), fold(real), conf) * o.lambda_T
    terms['W'] = losses.masked_l1(weight, jnp.zeros_like(weight), conf) if o.no_first_img else zero
  else:
    terms['F_Flow'] = terms['F_Warp'] = terms['W'] = zero

  if o.no_vgg:
    terms['G_VGG'] = zero
  elif vgg_variables is None:
    raise ValueError('options.no_vgg is False but no VGG19 variables were given: pass them, or set no_vgg')
  else:
    terms['G_VGG'] = losses.vgg_loss(models.vgg, vgg_variables, [fold(final), fold(raw)], fold(real),
                                     o.vgg_normalize) * o.lambda_feat
  if o.lambda_multiscale_l1:
    terms['G_L1'] = o.lambda_multiscale_l1 * (losses.multiscale_l1(fold(final), fold(real))
                                              + losses.multiscale_l1(fold(raw), fold(real)))

  with_labels = lambda images: stack_channels([fold(labels), fold(images)])
  terms['D_real'], terms['D_fake'], terms['G_GAN'], terms['G_GAN_Feat'] = _gan_terms(
      models.discriminator, params['D'], with_labels(real), [with_labels(final), with_labels(raw)], o, 2)

  fake_prev = jnp.concatenate([carry['last'][:, None], sg(final[:, :-1])], axis=1)
  terms['G_Warp'] = losses.masked_l1(fold(final), sg(flow_warp(fold(fake_prev), flow_ref)), conf) * o.lambda_T

  history = carry['history']
  seq = {'real': jnp.concatenate([history['real'], real], axis=1),
         'fake': jnp.concatenate([history['fake'], sg(final)], axis=1)}
  seq.update({k: jnp.concatenate([history[k], batch[k]], axis=1) for k in history if k.startswith('flow')})
  fake_seq = jnp.concatenate([history['fake'], final], axis=1)
  loss_d_t = []
  for s, disc in enumerate(models.temporal):
    # Each group on its own (its own BatchNorm statistics; the reference folds a chunk's groups into one batch,
    # the same with one group per chunk, as max_frames_per_gpu = n_frames_D gives): the terms average over the
    # valid groups, and are 0 when none is (that D is then not updated).
    groups, valid = group_validity(o, final.shape[1], carry['count'], s)
    weights = valid.astype(jnp.float32) / jnp.maximum(valid.sum(), 1)
    group_terms = [_gan_terms(disc, params['D_T'][s], temporal_inputs(seq['real'], seq, [g], s),
                              [temporal_inputs(fake_seq, seq, [g], s)], o, 1) for g in groups]
    d_real, d_fake, g_gan, g_feat = (sum(w * t[i] for w, t in zip(weights, group_terms)) for i in range(4))
    terms.update({f'D_T_real{s}': d_real, f'D_T_fake{s}': d_fake, f'G_T_GAN{s}': g_gan, f'G_T_GAN_Feat{s}': g_feat})
    loss_d_t.append(0.5 * (d_real + d_fake))

  terms['loss_G'] = sum(v for k, v in terms.items() if k.startswith(('G_', 'F_')) or k == 'W')
  terms['loss_D'] = 0.5 * (terms['D_real'] + terms['D_fake'])
  for s, loss in enumerate(loss_d_t):
    terms[f'loss_D_T{s}'] = loss
  total = terms['loss_G'] + terms['loss_D'] + sum(loss_d_t)
  terms = {k: jnp.asarray(v) for k, v in terms.items()}
  keep, n_new = o.history, final.shape[1]
  new_carry = {'prev': prevs, 'last': sg(final[:, -1]),
               'history': {k: sg(v[:, v.shape[1] - keep:]) for k, v in seq.items()},
               'count': jnp.minimum(carry['count'] + n_new, keep).astype(jnp.int32)}
  return total, (terms, new_carry)


def make_train_step(models: Models, options: Options, axis_name: Optional[str] = None) -> Callable:
  """step(state, batch, carry, vgg_variables, raw_only=False, lr_scale=1., fix_global=False) -> (state, carry, terms):
  one update of G, D and the temporal Ds from one forward pass.

  Gradients (and the loss terms) are averaged over `axis_name` under pmap. A temporal
  D with no valid group in this chunk (too little history yet) is not updated, as in
  the reference. raw_only, lr_scale and fix_global may be traced: lr_scale multiplies
  every Adam update (the epoch's learning rate / options.lr: Adam's step is linear in
  its learning rate); fix_global freezes every generator scale but the finest (the
  reference's niter_fix_global epochs; here by zero updates, with the same Adam state).
  """
  finest = f'netG{options.n_scales_spatial - 1}'

  def step(state: State, batch: Dict[str, Array], carry: Carry, vgg_variables: Optional[Any] = None,
           raw_only: Union[bool, Array] = False, lr_scale: Union[float, Array] = 1.,
           fix_global: Union[bool, Array] = False):
    grad_fn = jax.grad(chunk_losses, has_aux=True)
    active = [group_validity(options, batch['flow'].shape[1], carry['count'], s)[1].any()
              for s in range(len(models.temporal))]
    grads, (terms, carry) = grad_fn(state.params, batch, carry, vgg_variables, models, options, raw_only)
    if axis_name is not None:
      grads, terms = lax.pmean((grads, terms), axis_name)
    if options.n_scales_spatial > 1 and fix_global is not False:
      grads['G'] = {k: (v if k == finest else jax.tree_util.tree_map(lambda g: jnp.where(fix_global, 0., g), v))
                    for k, v in grads['G'].items()}
    scaled = lambda updates: jax.tree_util.tree_map(lambda u: u * lr_scale, updates)
    params, opt_state = dict(state.params), dict(state.opt_state)
    for name in ('G', 'D'):
      updates, opt_state[name] = state.tx[name].update(grads[name], state.opt_state[name], params[name])
      params[name] = optax.apply_updates(params[name], scaled(updates))
    d_t, d_t_opt = list(params['D_T']), list(opt_state['D_T'])
    for s, on in enumerate(active):
      updates, new_opt = state.tx['D_T'].update(grads['D_T'][s], d_t_opt[s], d_t[s])
      new_params = optax.apply_updates(d_t[s], scaled(updates))
      keep_old = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(on, a, b), new, old)
      d_t[s], d_t_opt[s] = keep_old(new_params, d_t[s]), keep_old(new_opt, d_t_opt[s])
    params['D_T'], opt_state['D_T'] = tuple(d_t), tuple(d_t_opt)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), carry, terms

  return step
