"""The plugin contract: every hook advplug calls, with what it receives and returns.

Plugins are modules (or objects) with functions marked ``@advplug.hookimpl`` whose names
match the specs below. An installed distribution exposes its plugin through the
entry-point group ``advplug``::

    [project.entry-points.advplug]
    my-plugin = "my_package.plugin"

advplug's own attacks, trainers, models and datasets register through these same hooks
(see ``advplug/builtins.py``): there is one path for built-ins and third parties.

Fault isolation: each plugin's hook implementation is called on its own. One that raises
is recorded (``advplug plugins`` shows the error, the CLI warns) and the others still
run. Registering a name (or alias) that another plugin already registered in that kind is
an error of the later plugin, naming both plugins and the name: the later plugin (never
advplug's built-ins, which register first) is disabled as a whole, so everything it
registered, of every kind, is removed, it registers nothing more, and asking for one of
its names says that it was disabled and why. An implementation whose name matches no hook
below, that takes an argument its hook does not pass, or that is declared
``wrapper=True``/``hookwrapper=True`` (advplug calls each implementation on its own, so
there is nothing for a wrapper to wrap) is refused when its plugin registers: it is an
error of that plugin and never called, while the plugin's other implementations still run.

Registration hooks
------------------
Each receives ``registry``, a :class:`advplug.registries.Registrar` bound to one kind of
thing and to the calling plugin. Call ``registry.add(name, obj, description="",
aliases=())`` (or ``registry(name, obj)``) once per thing.

Lifecycle hooks
---------------
The engine calls them with ``run``, the :class:`advplug.engine.Run` in progress (its
``config``, ``model``, ``trainer``, ``optimizer``, ``out_dir``, ``history``, ``epoch`` and
``threat``, the threat model in force). They must not replace ``run.model``; changing
weights is allowed only for hooks documented to do so (``advplug_epoch_end`` before the
checkpoint, ``advplug_fit_end``). advplug's own metrics writer, catastrophic-overfitting
guard, keep-best and overfitting plot are plugins on these hooks (:mod:`advplug.lifecycle`).
Order them with ``@hookimpl(tryfirst=True)`` / ``trylast=True``.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("advplug")
hookimpl = pluggy.HookimplMarker("advplug")


# -- registration -------------------------------------------------------------------

@hookspec
def advplug_register_attacks(registry):
    """Register attacks: ``name -> factory(model, threat, **params) -> attack``.

    ``attack(x, y) -> x_adv`` takes a batch in [0, 1] and returns adversarial inputs in
    [0, 1] inside ``threat`` (an :class:`advplug.threat.Threat`, ε in pixel space). It
    must not change the model's weights, mode or gradients.

    Mark the factory with :func:`advplug.attacks.base.attack_factory`, giving its
    parameter schema (``params={name: advplug.params.Param}``: type, default, range):
    every call is checked against it before the attack runs, and the factory receives
    every parameter with its default filled in. advplug checks what the attack does:
    outputs outside [0, 1] or the ball are an error, outputs with NaN/inf fall back to
    the clean input (counted and reported, never scored as fooled), and an attack that
    changes the model's parameters or buffers during evaluation is an error naming it.
    """


@hookspec
def advplug_register_trainers(registry):
    """Register trainers: ``name -> Trainer subclass``.

    A trainer solves the inner maximization and returns the loss the optimizer
    minimizes, one batch at a time; see :class:`advplug.trainers.base.Trainer`. It is
    built as ``cls(model, threat, **params)`` and may own extra modules and optimizers
    (saved with the run through ``state_dict``/``load_state_dict``).
    """


@hookspec
def advplug_register_schedules(registry):
    """Register schedules: ``name -> factory(**params) -> schedule``.

    ``schedule(t, epoch, threat, params) -> dict`` maps training progress ``t`` in
    [0, 1] (``epoch / (epochs - 1)``: 0 at the first epoch, 1 at the last; 1 for a
    one-epoch run) to the attack parameters for that epoch, e.g. ``{"eps": 0.1,
    "steps": 20}``. ``epoch`` is the 0-based epoch index, ``threat`` the threat the run was configured with
    model, ``params`` the trainer's current parameters (return only keys the trainer
    has). The engine applies the dict through ``Trainer.set_attack_params`` at every
    epoch start and logs it in the metrics (``eps``, ``attack_<key>``).
    """


@hookspec
def advplug_register_samplers(registry):
    """Register batch samplers: ``name -> factory(**params) -> sampler``.

    A sampler decides which part of a batch stays clean and which attack perturbs each
    other part (mixed clean:adversarial training). It replaces the trainer's inner
    maximization: a run sets ``sampler`` (``--sampler name:key=value,...``) and leaves
    ``trainer`` at ``standard`` (any other trainer is an error). The engine then trains
    with :class:`advplug.trainers.sampled.SampledTrainer`; the contract:

    - ``factory(**params)`` checks its parameters (an unknown or malformed one is one
      :class:`advplug.AdvplugError`) and returns the sampler, before any data is loaded.
    - ``sampler.bind(ctx)`` is called before the first batch, with an
      :class:`advplug.samplers.SamplerContext`: ``model``, ``threat`` (the run's threat
      model, ε in pixel space), ``seed`` (the run's), ``registry``, ``device`` and ``run``.
      Build attacks here (:func:`advplug.samplers.training_attack`; unknown names fail
      before training starts). A schedule that changes ε binds the sampler again.
    - ``sampler.sample(x, y, step) -> SampledBatch`` per batch (``x`` in [0, 1] on the
      device, the model in training mode; ``step`` the 0-based batch count of the whole
      run, saved in checkpoints). :class:`advplug.samplers.SampledBatch` holds ``x``
      (the training inputs: same shape, detached, in [0, 1], clean rows equal to the
      batch's), ``adversarial`` (bool per row) and optionally ``source`` (int64 per row,
      an index into ``sources``, names fixed per sampler) for the epoch metrics
      ``sampler_adversarial_share`` and ``sampler_share_<name>``.
    - The loss is the cross-entropy of ``model(x)`` in training mode; the engine's
      optimizer steps on it. Random choices come from
      ``advplug.samplers.batch_generator(ctx.seed, step)``, so they depend on (seed,
      step) only and a resumed run repeats them. Attacks run through
      :func:`advplug.samplers.attack_batch`: as in evaluation, in eval mode with the
      parameters frozen (``eval_frozen``: no parameter ``.grad`` is written, the mode is
      restored), projected onto their threat ball and [0, 1]. A sampler must not change
      the model's weights.
    - Optional ``state_dict()`` / ``load_state_dict(state)``: saved with the run.
    """


@hookspec
def advplug_register_model_transforms(registry):
    """Register model transforms: ``name -> fn(model, **options) -> model``.

    Applied after the model is built and before training, in the order given, and
    recorded in the checkpoint so ``advplug.load_model`` rebuilds the same model.
    """


@hookspec
def advplug_register_datasets(registry):
    """Register datasets: ``name -> advplug.data.DatasetSpec``."""


@hookspec
def advplug_register_models(registry):
    """Register architectures: ``name -> factory(num_classes, in_channels, mean, std,
    activation="relu", input_size=32, **kwargs) -> nn.Module``.

    The module takes inputs in [0, 1] and normalizes inside (``mean``/``std`` are the
    dataset's); ``activation`` is a name or a zero-argument callable returning a module;
    ``input_size`` is the image side (for networks with a fixed flatten size).
    """


# -- lifecycle ----------------------------------------------------------------------
# Under torchrun the lifecycle hooks run on rank 0 only (it writes the run's files); after
# each epoch's hooks the model's weights go from rank 0 to every process, and rank 0's
# answer to advplug_should_stop stops every process.

@hookspec
def advplug_train_start(run):
    """Called once before the first epoch (also when a run resumes)."""


@hookspec
def advplug_epoch_end(run, epoch, metrics):
    """Called after each epoch with its metrics dict (1-based ``epoch``), before the
    epoch's checkpoint is written; ``run.history[-1]`` is ``metrics``.

    A plugin may add keys to ``metrics``; they are written to ``metrics.jsonl`` (by the
    built-in writer, which runs last). A plugin may restore earlier weights here (the
    catastrophic-overfitting guard does); the checkpoint then holds them.
    """


@hookspec(firstresult=True)
def advplug_should_stop(run, epoch, metrics):
    """Return a reason (a non-empty string) to stop training after this epoch, else None;
    ``metrics`` is the epoch's metrics dict (1-based ``epoch``), as ``advplug_epoch_end`` left it.

    The first non-None answer wins. The epoch's checkpoint is already written; the
    reason is printed and recorded in the run manifest. A plugin that restores an
    earlier state (e.g. a catastrophic-overfitting guard) does so here, before
    answering.
    """


@hookspec
def advplug_fit_end(run):
    """Called once after the last epoch (or an early stop), before the final model is saved
    and evaluated on the test split: a plugin may put other weights in place here (the
    built-in keep-best restores its best epoch)."""


@hookspec
def advplug_train_end(run):
    """Called once after training ends, stopped early or not; ``run.history`` holds
    every epoch's metrics."""
