"""Everything a run needs before its first step, gathered in one `Run` object.

`setup_run` loads the student's tokenizer (and checks the teacher shares it), reads and encodes
the prompts, connects the grader, starts Ray when asked, builds the roles and opens the metrics
sink. Problems with the job's inputs raise `JobInputError` naming the spec field.
"""

from __future__ import annotations

import logging
import os
import random
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, PreTrainedTokenizerBase

from distill_api import DistillJob, DistillJobSpec
from distill_grader.client import GRADER_URL_ENV, Grader, make_grader
from distill_grader.schema import GradeRequestItem
from distill_trainer.batch import RolloutBatch
from distill_trainer.checkpoint import (
    DEFAULT_KEEP,
    JobCheckpoints,
    ResumePoint,
    checkpoint_uri,
    math_fields,
)
from distill_trainer.config import RunOptions, role_configs
from distill_trainer.data import read_dataset
from distill_trainer.metrics import MetricsSink
from distill_trainer.prompts import EncodedPrompt, encode_prompts, steps_per_epoch
from distill_trainer.roles import Roles, SamplingParams, build_roles
from distill_trainer.roles.models import load_tokenizer, seed_everything

log = logging.getLogger(__name__)


class JobInputError(ValueError):
    """A job input (data, model, tokenizer) that cannot work; the message names the field."""


@dataclass
class Run:
    """The state of one run shared by the loop's functions."""

    job_name: str
    spec: DistillJobSpec
    tokenizer: PreTrainedTokenizerBase
    train: list[EncodedPrompt]
    val: list[EncodedPrompt]
    total_steps: int
    sampling: SamplingParams
    grader: Grader
    roles: Roles
    sink: MetricsSink
    checkpoints: JobCheckpoints
    closers: ExitStack = field(repr=False)
    resume: ResumePoint | None = None  # the checkpoint this run continues from
    last_checkpoint: str | None = None  # URI of the newest committed checkpoint
    final_model: str | None = None  # URI of the exported student, once written
    weight_version: int = 0  # what the rollout engines must hold: syncs so far (driver.py)
    # The engine's behaviour logprobs serve as the old logprobs (RunOptions, resolved here).
    old_logprobs_from_rollout: bool = False

    @property
    def start_step(self) -> int:
        """Steps already trained (0 for a fresh run)."""
        return self.resume.manifest.step if self.resume else 0

    def grade(self, batch: RolloutBatch, prompts: list[EncodedPrompt]) -> torch.Tensor:
        """[N] scores of the batch's responses; row i answers prompt i // (N / len(prompts)),
        graded by the rule of that prompt's data_source."""
        per_prompt = batch.size // len(prompts)
        texts = self.tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
        items = [
            GradeRequestItem(
                id=str(i),
                response=text,
                ground_truth=prompts[i // per_prompt].ground_truth,
                data_source=prompts[i // per_prompt].data_source,
            )
            for i, text in enumerate(texts)
        ]
        scores = {r.id: r.score for r in self.grader.grade(items)}
        return torch.tensor([scores[item.id] for item in items], dtype=torch.float32)

    def close(self) -> None:
        self.closers.close()


def check_shared_tokenizer(student: PreTrainedTokenizerBase, teacher_model: str) -> None:
    """The KL is per token: the teacher must read the student's tokens as the same strings."""
    try:
        teacher = load_tokenizer(teacher_model)
        vocab_size = AutoConfig.from_pretrained(teacher_model).vocab_size
    except (OSError, ValueError) as err:
        raise JobInputError(f"teacher.model: cannot load {teacher_model!r}: {err}") from err
    if teacher.get_vocab() != student.get_vocab():
        raise JobInputError(
            f"teacher.model: {teacher_model!r} has a different tokenizer from student.model "
            f"({len(teacher)} vs {len(student)} tokens); the per-token KL needs a shared vocabulary"
        )
    if vocab_size < len(student):
        raise JobInputError(
            f"teacher.model: {teacher_model!r} has {vocab_size} output logits, fewer than the "
            f"{len(student)} tokens of the shared tokenizer"
        )


def load_prompts(
    field_path: str, uri: str, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> list[EncodedPrompt]:
    try:
        records = read_dataset(uri)
    except (OSError, ValueError) as err:
        raise JobInputError(f"{field_path}: {err}") from err
    prompts = encode_prompts(tokenizer, records, max_length)
    if not prompts:
        raise JobInputError(
            f"{field_path}: no prompt of {uri!r} fits rollout.maxPromptLength={max_length}"
        )
    if len(prompts) < len(records):
        log.warning(
            "%s: skipped %d of %d prompts longer than rollout.maxPromptLength=%d tokens",
            field_path,
            len(records) - len(prompts),
            len(records),
            max_length,
        )
    return prompts


def check_context_length(spec: DistillJobSpec) -> None:
    """A prompt plus its response must fit the models' position embeddings (when the HF config
    has a limit): the actor and the teacher score the whole sequence at once."""
    needed = spec.rollout.max_prompt_length + spec.rollout.max_response_length
    models = {"student.model": spec.student.model}
    if spec.needs_teacher and spec.teacher is not None:
        models["teacher.model"] = spec.teacher.model
    for field_path, model in models.items():
        try:
            limit = getattr(AutoConfig.from_pretrained(model), "max_position_embeddings", None)
        except (OSError, ValueError) as err:
            raise JobInputError(f"{field_path}: cannot load {model!r}: {err}") from err
        if limit is not None and needed > limit:
            raise JobInputError(
                f"rollout.maxPromptLength + rollout.maxResponseLength: "
                f"{spec.rollout.max_prompt_length} + {spec.rollout.max_response_length} = "
                f"{needed} tokens, more than the max_position_embeddings={limit} of "
                f"{field_path} {model!r}"
            )


def check_old_logprobs_source(spec: DistillJobSpec, options: RunOptions) -> None:
    """Refuse the engine's logprobs as the PPO old logprobs where they are of another
    distribution: under top-p both engines renormalise them over the nucleus, so every ratio
    would start at 1/Z, below 1 − ε (all tokens clipped), and the KL to an identical teacher would
    read log Z per token."""
    if options.old_logprobs_from_rollout and spec.rollout.top_p < 1.0:
        raise JobInputError(
            f"rollout.topP={spec.rollout.top_p}: old_logprobs_from_rollout needs topP 1 (the "
            "engine's logprobs are renormalised over the nucleus, the actor's are not); leave it "
            "unset or false"
        )


def warn_about_sampling(spec: DistillJobSpec) -> None:
    """Once per run: settings that are legitimate but easy to misread in the metrics."""
    if spec.rollout.top_p < 1.0:
        log.warning(
            "rollout.topP=%s: the rollout engine's behaviour logprobs come from the truncated "
            "nucleus distribution, so they differ from the actor's (see rollout/logprob_mismatch); "
            "the PPO ratio uses the actor's own old logprobs",
            spec.rollout.top_p,
        )
    if spec.needs_teacher and spec.algorithm.kl_penalty_coef == 0:
        # A legitimate ablation: the KL is measured and logged but does not move the advantage.
        log.info("algorithm.klPenaltyCoef=0: the teacher scores responses but adds no advantage")


VALIDATION_SUBSET_SEED = 0  # not training.seed: runs with different seeds see the same problems


def validation_subset(
    prompts: list[EncodedPrompt], max_prompts: int, cap: int | None = None
) -> list[EncodedPrompt]:
    """At most min(valMaxPrompts, cap) prompts, a fixed random sample in file order (a file
    sorted by difficulty or source would make its first N unrepresentative)."""
    limit = min(max_prompts, cap or max_prompts)
    if len(prompts) <= limit:
        return prompts
    keep = sorted(random.Random(VALIDATION_SUBSET_SEED).sample(range(len(prompts)), limit))
    return [prompts[i] for i in keep]


def count_steps(spec: DistillJobSpec, num_prompts: int) -> int:
    """totalSteps when set (it takes precedence over numEpochs, as in the seed), else numEpochs
    passes over the data."""
    t = spec.training
    per_epoch = steps_per_epoch(num_prompts, t.batch_size)
    if per_epoch == 0:
        raise JobInputError(
            f"training.batchSize: {t.batch_size} is more than the {num_prompts} usable prompts "
            "of data.train"
        )
    return t.total_steps or per_epoch * t.num_epochs


def _grader(spec: DistillJobSpec) -> Grader:
    """The grader service at DISTILL_GRADER_URL, else an in-process grading pool."""
    return make_grader(os.environ.get(GRADER_URL_ENV), spec.grader.timeout_seconds)


def setup_run(job: DistillJob, options: RunOptions) -> Run:
    """Load data and models for `job`; the caller must `close()` the returned Run."""
    spec = job.spec
    seed_everything(spec.training.seed)
    try:
        tokenizer = load_tokenizer(spec.student.model)
    except (OSError, ValueError) as err:
        raise JobInputError(f"student.model: cannot load {spec.student.model!r}: {err}") from err
    if spec.needs_teacher and spec.teacher is not None:
        check_shared_tokenizer(tokenizer, spec.teacher.model)
    check_context_length(spec)
    check_old_logprobs_source(spec, options)
    warn_about_sampling(spec)
    max_prompt = spec.rollout.max_prompt_length
    train = load_prompts("data.train", spec.data.train, tokenizer, max_prompt)
    val = load_prompts("data.val", spec.data.val, tokenizer, max_prompt) if spec.data.val else []
    val = validation_subset(val, spec.training.val_max_prompts, options.max_val_prompts)
    total_steps = count_steps(spec, len(train))
    # Before any model loads: a bad bucket or a refused checkpoint fails the job in seconds.
    checkpoints, resume = open_checkpoints(job, options)
    closers = ExitStack()
    try:
        resumed_step = resume.manifest.step if resume is not None else None
        sink, grader, roles = _start(
            job, options, tokenizer.pad_token_id, total_steps, resumed_step, closers
        )
    except BaseException:
        closers.close()
        raise
    log.info(
        "%s: %d train / %d val prompts, %d steps, roles %s",
        job.metadata.name,
        len(train),
        len(val),
        total_steps,
        roles.names,
    )
    sampling = SamplingParams(
        max_new_tokens=spec.rollout.max_response_length,
        temperature=spec.rollout.temperature,
        top_p=spec.rollout.top_p,
    )
    return Run(
        job_name=job.metadata.name,
        spec=spec,
        tokenizer=tokenizer,
        train=train,
        val=val,
        total_steps=total_steps,
        sampling=sampling,
        grader=grader,
        roles=roles,
        sink=sink,
        checkpoints=checkpoints,
        closers=closers,
        resume=resume,
        last_checkpoint=resume.uri if resume else None,
        old_logprobs_from_rollout=(
            roles.exact_logprobs
            if options.old_logprobs_from_rollout is None
            else options.old_logprobs_from_rollout
        ),
    )


def open_checkpoints(
    job: DistillJob, options: RunOptions
) -> tuple[JobCheckpoints, ResumePoint | None]:
    """The job's checkpoint store and the checkpoint to resume from: --resume-from, else the
    job's newest committed one (none: a fresh start)."""
    spec = job.spec
    keep = spec.checkpoint.keep if spec.checkpoint else DEFAULT_KEEP
    math = math_fields(spec, options.math_options())
    checkpoints = JobCheckpoints(
        checkpoint_uri(spec, options.output_dir), job.metadata.name, math, keep
    )
    resume = checkpoints.resume_point(options.resume_from, options.force_resume)
    if resume is not None:
        log.info("resuming %s from %s", job.metadata.name, resume.uri)
    elif spec.checkpoint is None:
        log.info(
            "no spec.checkpoint: checkpoints and the final model go to %s, which does not "
            "outlive this pod",
            checkpoints.uri,
        )
    return checkpoints, resume


def _start(
    job: DistillJob,
    options: RunOptions,
    pad_token_id: int,
    total_steps: int,
    resumed_step: int | None,
    closers: ExitStack,
) -> tuple[MetricsSink, Grader, Roles]:
    """Metrics first (the endpoint answers while models load), then grader, Ray and roles;
    each registers its own clean-up on `closers`."""
    sink = MetricsSink(
        job.metadata.name,
        options.output_dir,
        total_steps,
        options.metrics_port,
        options.progress,
        resumed_step,
        options.progress_line,
    )
    closers.callback(sink.close)
    grader = _grader(job.spec)
    if hasattr(grader, "close"):
        closers.callback(grader.close)
    if options.backend == "ray":
        _start_ray(options, closers)
    configs = role_configs(job.spec, options, total_steps)
    roles = build_roles(configs, job.spec, options.backend, pad_token_id, options.colocate)
    closers.callback(roles.close)
    return sink, grader, roles


def _start_ray(options: RunOptions, closers: ExitStack) -> None:
    import ray

    from distill_trainer.roles.group import init_ray

    if init_ray(options.ray_num_cpus):
        closers.callback(ray.shutdown)
