"""The ``hf`` rollout server: a Ray actor serving verl's token-in-token-out ``generate`` with a HF model.

It plays the part vLLM's ``vLLMHttpServer`` plays for verl: the agent loop calls
``generate(request_id, prompt_ids, sampling_params, ...) -> TokenOutput`` (concurrently, one prompt per call),
and the trainer drives the lifecycle (``sleep``/``wake_up`` around training, weight updates from the actor
through :class:`~verl_agrae.rollout.adapter.HFServerAdapter`, ``abort_all_requests``/``resume_generation``
around weight syncs). Concurrent requests are decoded together by :class:`~verl_agrae.rollout.batcher.
RequestBatcher`.

The class is plain Python (tests drive it directly inside an event loop); :class:`~verl_agrae.rollout.replica.
HFReplica` wraps it with ``ray.remote``.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from verl_agrae.rollout.batcher import RequestBatcher
from verl_agrae.rollout.generator import FINISH_ABORT, GenerationRequest, GenerationResult, HFGenerator
from verl_agrae.rollout.sampling import SamplingOptions
from verl_agrae.rollout.settings import HFRolloutSettings, resolve_device, resolve_dtype

__all__ = ["HFRolloutServer", "eos_token_ids_of"]

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

# Chat-turn terminators that some tokenizers register as added tokens without naming them EOS.
_CHAT_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_turn|>", "<end_of_turn>")


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def eos_token_ids_of(hf_config: Any, generation_config: Any = None, tokenizer: Any = None) -> list[int]:
    """Every token id that ends a response: the model's, the generation config's and the tokenizer's EOS,
    plus chat-turn terminators the tokenizer knows (vLLM stops on the same set)."""
    ids: list[int] = []
    for source in (generation_config, hf_config, tokenizer):
        if source is None:
            continue
        ids += _as_list(getattr(source, "eos_token_id", None))
    if tokenizer is not None and hasattr(tokenizer, "get_added_vocab"):
        added = tokenizer.get_added_vocab()
        ids += [added[t] for t in _CHAT_END_TOKENS if t in added]
    return sorted(set(ids))


class HFRolloutServer:
    """Serve generation requests for one rollout replica with a Hugging Face causal LM.

    Args:
        config: verl ``RolloutConfig`` (dataclass or DictConfig); engine settings under ``engine_kwargs.hf``.
        model_config: verl ``HFModelConfig`` or the ``actor_rollout_ref.model`` DictConfig.
        rollout_mode: verl ``RolloutMode`` (hybrid, colocated or standalone); None is treated as standalone.
        replica_rank: rank of the replica this server belongs to.
        node_rank: rank of this node within the replica (always 0: a replica is one process).
        visible_devices: accelerator ids of the replica's workers, exported as the platform's visible-devices
            variable before CUDA is touched, so the server shares its worker's GPU.
        visible_devices_envvar: the variable name (``CUDA_VISIBLE_DEVICES`` on NVIDIA).
    """

    def __init__(
        self,
        config: Any,
        model_config: Any,
        rollout_mode: Any = None,
        replica_rank: int = 0,
        node_rank: int = 0,
        visible_devices: str | None = None,
        visible_devices_envvar: str | None = None,
    ):
        if visible_devices and visible_devices_envvar:
            os.environ[visible_devices_envvar] = visible_devices

        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.config import HFModelConfig

        self.config = omega_conf_to_dataclass(config)
        self.model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.settings = HFRolloutSettings.from_rollout_config(self.config)
        self.rollout_mode = rollout_mode
        self.replica_rank = replica_rank
        self.node_rank = node_rank
        self.global_steps: int | None = None

        hf_config = self.model_config.hf_config
        max_pos = getattr(hf_config, "max_position_embeddings", None)
        if max_pos is None and getattr(hf_config, "text_config", None) is not None:
            max_pos = getattr(hf_config.text_config, "max_position_embeddings", None)
        self.max_model_len = int(self.config.max_model_len or max_pos or (2**31 - 1))
        if max_pos is not None and self.max_model_len > int(max_pos):
            raise ValueError(
                f"rollout.max_model_len ({self.max_model_len}) exceeds the model's max_position_embeddings ({max_pos})"
            )

        self.device = resolve_device(self.settings.device)
        self.dtype = resolve_dtype(self.settings.dtype, getattr(self.config, "dtype", None))
        self.generator: HFGenerator | None = None
        self.batcher: RequestBatcher | None = None
        self._sleeping = False
        # Generation gate (closed by abort_all_requests, opened by resume_generation).
        self._paused = False
        self._rejecting = False
        self._resume_event = asyncio.Event()
        self._resume_event.set()
        self._num_parked = 0  # requests waiting at the closed gate (get_stats()["num_parked"])
        self._weights_received: set[str] = set()
        # rollout.full_determinism: unseeded sampled requests get a seed from their content (_content_seed).
        self._deterministic = bool(getattr(self.config, "full_determinism", False))
        self._base_seed = int(getattr(self.config, "seed", 0) or 0)
        self._draws: dict[bytes, int] = {}
        self._params: dict[str, torch.Tensor] | None = None
        self._profiler = None
        self._http_port: int | None = None
        self._http_task: asyncio.Task | None = None
        self._http_server = None
        self._num_threads: int | None = None
        self._address = _node_ip()
        # All model work (load, decode, weight copies) runs on one dedicated thread: torch's intra-op
        # thread setting is per thread, and one compute thread keeps decoding off the actor's event loop.
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="hf-rollout",
            initializer=_init_compute_thread,
            initargs=(self.settings.resolved_num_threads(),),
        )

    # ------------------------------------------------------------------ start-up

    def _load_model(self) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        hf_config = copy.deepcopy(self.model_config.hf_config)
        model = AutoModelForCausalLM.from_pretrained(
            self.model_config.local_path,
            config=hf_config,
            dtype=self.dtype,
            attn_implementation=self.settings.attn_implementation,
            trust_remote_code=self.model_config.trust_remote_code,
        )
        return model.to(self.device).eval()

    async def launch_server(self, start_http: bool = True) -> None:
        """Load the model, start the batcher and (optionally) a small HTTP endpoint with a unique port."""
        model = await self._in_compute_thread(self._load_model)
        self._num_threads = await self._in_compute_thread(torch.get_num_threads)
        tok = self.model_config.tokenizer
        eos = eos_token_ids_of(self.model_config.hf_config, self.model_config.generation_config, tok)
        pad = getattr(tok, "pad_token_id", None) if tok is not None else None
        if pad is None:
            pad = getattr(self.model_config.hf_config, "pad_token_id", None)
        if pad is None:
            pad = eos[0] if eos else 0
        seed = int(getattr(self.config, "seed", 0) or 0) + int(self.replica_rank)
        self.generator = HFGenerator(model, eos_token_ids=eos, pad_token_id=pad, seed=seed)
        self._params = _named_tensors(model)
        self.batcher = RequestBatcher(
            self.generator.generate,
            max_batch_size=self.settings.max_batch_size,
            max_wait_s=self.settings.max_wait_ms / 1000.0,
            executor=self._executor,
        )
        logger.info(
            "hf rollout server %s: %s on %s (%s), eos=%s, max_batch_size=%d, max_wait_ms=%s",
            self.replica_rank,
            type(model).__name__,
            self.device,
            self.dtype,
            eos,
            self.settings.max_batch_size,
            self.settings.max_wait_ms,
        )
        if start_http:
            await self._start_http()

    async def _in_compute_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _start_http(self) -> None:
        # A real endpoint gives every replica a unique "host:port" (verl keys its load balancer by address)
        # and lets non-Ray clients check health or generate token-in-token-out.
        import socket

        import uvicorn
        from fastapi import FastAPI

        app = FastAPI()

        @app.get("/health")
        async def health() -> dict:
            return {"status": "ok", "global_steps": self.global_steps}

        @app.post("/generate")
        async def http_generate(body: dict) -> dict:
            out = await self.generate(
                prompt_ids=body["prompt_ids"],
                sampling_params=body.get("sampling_params", {}),
                request_id=body.get("request_id", "http"),
            )
            return out.model_dump()

        family = socket.AF_INET6 if ":" in self._address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._address, 0))  # port 0: the OS picks a free port, which we then own
        self._http_port = sock.getsockname()[1]
        self._http_server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        sock.listen(128)  # accept connections (queued) even before uvicorn's loop picks them up
        self._http_task = asyncio.get_running_loop().create_task(self._http_server.serve(sockets=[sock]))
        for _ in range(500):  # uvicorn starts within milliseconds; fail loudly rather than hand out a dead port
            if self._http_server.started:
                break
            if self._http_task.done():
                self._http_task.result()
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError("hf rollout server: the HTTP endpoint did not start within 5 s")

    def get_server_address(self) -> tuple[str, int | None]:
        """``(ip, port)`` of the HTTP endpoint (port None when it was not started)."""
        return self._address, self._http_port

    # ------------------------------------------------------------------ generation

    def _max_tokens_default(self, prompt_len: int) -> int:
        # Same budget rule as verl's vLLM server: cap by response_length and by the remaining
        # prompt+response budget (multi-turn prompts grow).
        cfg = self.config
        return max(1, min(cfg.response_length, cfg.prompt_length + cfg.response_length - prompt_len))

    def _make_request(self, prompt_ids: list[int], sampling_params: dict[str, Any]) -> GenerationRequest:
        prompt_ids = [int(t) for t in prompt_ids]
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise ValueError(
                f"prompt of {len(prompt_ids)} tokens leaves no room to generate within max_model_len="
                f"{self.max_model_len}"
            )
        options = SamplingOptions.from_request(
            sampling_params, default_max_tokens=self._max_tokens_default(len(prompt_ids))
        )
        max_tokens = max(1, min(options.max_tokens, room))
        if max_tokens != options.max_tokens:
            options = _replace(options, max_tokens=max_tokens)
        if self._deterministic and options.seed is None and not options.greedy:
            options = _replace(options, seed=self._content_seed(prompt_ids))
        return GenerationRequest(prompt_ids=prompt_ids, options=options)

    def _content_seed(self, prompt_ids: list[int]) -> int:
        """Seed of an unseeded sampled request under ``rollout.full_determinism``.

        verl's agent loop sends each prompt ``rollout.n`` times with the same sampling parameters and no seed.
        The k-th request (k = 0, 1, ...) for a given prompt is seeded from ``(rollout.seed, prompt, k)``, so the
        multiset of samples for a prompt does not depend on arrival order, batching, the replica that serves
        it or the process layout. Seeded requests sample independently of their batch (see ``HFGenerator``).
        """
        key = hashlib.sha256(b",".join(str(t).encode() for t in prompt_ids)).digest()
        k = self._draws.get(key, 0)
        self._draws[key] = k + 1
        digest = hashlib.sha256(f"{self._base_seed}:{key.hex()}:{k}".encode()).digest()
        return int.from_bytes(digest[:8], "little") & (2**63 - 1)

    async def _wait_for_gate(self) -> bool:
        """Park while generation is paused; False when the request must be rejected instead."""
        while self._paused:
            if self._rejecting:
                return False
            self._num_parked += 1
            try:
                await self._resume_event.wait()
            finally:  # also when the caller is cancelled while parked
                self._num_parked -= 1
        return True

    async def _ensure_awake(self) -> None:
        if self._sleeping:
            # verl always wakes the server (through a weight update) before it generates; do it here
            # too rather than fail if a caller generates right after sleep().
            logger.warning("hf rollout server %s: generate() while asleep, waking up", self.replica_rank)
            await self.wake_up()

    async def generate_n(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str | None = None,
    ) -> list[Any]:
        """Generate ``sampling_params["n"]`` samples for one prompt; a list of verl ``TokenOutput``."""
        from verl.workers.rollout.replica import TokenOutput

        if self.batcher is None:
            raise RuntimeError("hf rollout server is not launched: call launch_server() first")
        request = self._make_request(prompt_ids, sampling_params)
        if not await self._wait_for_gate():
            return [
                TokenOutput(token_ids=[], log_probs=None, stop_reason="aborted", extra_fields=self._extra())
                for _ in range(request.options.n)
            ]
        await self._ensure_awake()
        results = await self.batcher.submit(request)
        return [self._to_token_output(r) for r in results]

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        audio_data: list[Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """verl's token-in-token-out generation for one prompt.

        Args:
            prompt_ids: prompt token ids.
            sampling_params: verl/vLLM-style sampling dict (see :class:`SamplingOptions`); ``n`` must be 1 here
                (verl repeats prompts itself; use :meth:`generate_n` for several samples in one call).
            request_id: the caller's id (logged only).
            image_data, video_data, audio_data, mm_processor_kwargs: multimodal inputs (not supported).
            **kwargs: extra per-request fields verl may pass (e.g. ``priority``), ignored.

        Returns:
            ``TokenOutput`` with ``token_ids``, ``log_probs`` (when ``sampling_params["logprobs"]``),
            ``stop_reason`` (``"completed"`` or ``"aborted"``) and ``extra_fields["global_steps"]``.
        """
        if image_data or video_data or audio_data:
            raise NotImplementedError("the hf rollout serves text-only models (got image/video/audio data)")
        n = int(sampling_params.get("n", 1) or 1)
        if n != 1:
            raise ValueError(
                f"generate() returns one sample, got n={n}; verl repeats prompts itself (rollout.n), "
                "call generate_n() for several samples of one prompt"
            )
        outputs = await self.generate_n(prompt_ids, sampling_params, request_id=request_id)
        return outputs[0]

    def _extra(self) -> dict[str, Any]:
        return {"global_steps": self.global_steps}

    def _to_token_output(self, result: GenerationResult) -> Any:
        from verl.workers.rollout.replica import TokenOutput

        return TokenOutput(
            token_ids=result.token_ids,
            log_probs=result.log_probs,
            stop_reason="aborted" if result.finish_reason == FINISH_ABORT else "completed",
            # Same extra fields as verl's vLLM server: verl turns every key into a batch column.
            extra_fields=self._extra(),
        )

    def get_stats(self) -> dict[str, Any]:
        """Batching counters: requests served, ``generate`` calls made and the size of each batch, plus
        ``num_parked``, the requests now held by :meth:`abort_all_requests` until :meth:`resume_generation`."""
        stats = self.batcher.stats if self.batcher is not None else None
        return {
            "num_requests": stats.num_requests if stats else 0,
            "num_batches": stats.num_batches if stats else 0,
            "batch_sizes": list(stats.batch_sizes) if stats else [],
            "decode_seconds": stats.decode_seconds if stats else 0.0,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "global_steps": self.global_steps,
            "num_threads": self._num_threads,
            "num_parked": self._num_parked,
        }

    # ------------------------------------------------------------------ weights

    async def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy actor tensors (HF parameter names) into the model; returns how many were loaded.

        Raises:
            KeyError: a name the model does not have.
            ValueError: a shape that does not match.
        """
        if self._params is None:
            raise RuntimeError("hf rollout server is not launched: call launch_server() first")
        async with self.batcher.lock:
            return await self._in_compute_thread(self._copy_weights, list(named_tensors))

    def _copy_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> int:
        count = 0
        with torch.no_grad():
            for name, tensor in named_tensors:
                target = self._params.get(name)
                if target is None:
                    raise KeyError(
                        f"actor weight {name!r} has no counterpart in the rollout model "
                        f"({type(self.generator.model).__name__})"
                    )
                if tuple(target.shape) != tuple(tensor.shape):
                    raise ValueError(
                        f"actor weight {name!r} has shape {tuple(tensor.shape)}, rollout model expects "
                        f"{tuple(target.shape)}"
                    )
                target.copy_(tensor.to(device=target.device, dtype=target.dtype))
                self._weights_received.add(name)
                count += 1
        return count

    async def finish_weight_update(self, global_steps: int | None = None) -> dict[str, Any]:
        """Close one weight update: record the step and report parameters the actor did not send."""
        missing = sorted(set(self._params) - self._weights_received) if self._params else []
        received = len(self._weights_received)
        self._weights_received = set()
        if missing:
            # Tied weights come once under either name; anything else missing is worth a warning.
            logger.warning("hf rollout: weight update left %d tensor(s) unchanged, e.g. %s", len(missing), missing[:3])
        if global_steps is not None:
            self.global_steps = global_steps
        return {"received": received, "missing": missing}

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    async def get_weights(self) -> dict[str, torch.Tensor]:
        """CPU copies of the model's tensors (debugging and tests)."""
        async with self.batcher.lock:
            return {k: v.detach().to("cpu", copy=True) for k, v in self._params.items()}

    # ------------------------------------------------------------------ lifecycle

    async def sleep(self) -> None:
        """Free accelerator memory for training: move the model to CPU (nothing to free on CPU)."""
        if not getattr(self.config, "free_cache_engine", True) or self.generator is None:
            return
        if self.device.type == "cpu" or self._sleeping:
            return
        async with self.batcher.lock:
            self.generator.model.to("cpu")
            self._params = _named_tensors(self.generator.model)
            torch.cuda.empty_cache()
            self._sleeping = True

    async def wake_up(self, tags: list[str] | None = None) -> None:
        """Bring the model back to its device after :meth:`sleep` (``tags`` accepted for verl, all restored)."""
        if not self._sleeping or self.generator is None:
            return
        async with self.batcher.lock:
            self.generator.model.to(self.device)
            self._params = _named_tensors(self.generator.model)
            self._sleeping = False

    async def clear_kv_cache(self) -> None:
        """No-op: the KV cache lives only while a batch decodes, so it never holds stale weights."""

    async def release_kv_cache(self) -> None:
        """No-op: no KV cache is kept between batches."""

    async def resume_kv_cache(self) -> None:
        """No-op counterpart of :meth:`release_kv_cache`."""

    async def abort_all_requests(self, reject_request: bool = False, **kwargs: Any) -> dict[str, Any]:
        """Stop decoding, return every in-flight and queued request as aborted, and hold new ones.

        Aborted requests keep their generated tokens (verl's partial rollout resumes them). Requests that
        arrive afterwards wait for :meth:`resume_generation`, or are answered ``aborted`` at once when
        ``reject_request`` is True.
        """
        self._paused = True
        self._rejecting = bool(reject_request)
        self._resume_event.clear()
        count = await self.batcher.abort_all() if self.batcher is not None else 0
        return {"aborted_count": count, "request_ids": []}

    async def resume_generation(self) -> None:
        """Admit requests again after :meth:`abort_all_requests`."""
        self._paused = False
        self._rejecting = False
        self._resume_event.set()

    async def start_profile(self, **kwargs: Any) -> None:
        """Start a torch profiler when ``rollout.profiler`` names a ``save_path``; otherwise do nothing."""
        save_path = _profile_dir(self.config)
        if save_path is None or self._profiler is not None:
            return
        self._profiler = torch.profiler.profile(record_shapes=False, with_stack=False)
        self._profiler.__enter__()

    async def stop_profile(self) -> None:
        """Stop the profiler started by :meth:`start_profile` and write a Chrome trace under ``save_path``."""
        if self._profiler is None:
            return
        profiler, self._profiler = self._profiler, None
        profiler.__exit__(None, None, None)
        save_path = _profile_dir(self.config)
        os.makedirs(save_path, exist_ok=True)
        path = os.path.join(save_path, f"hf_rollout_replica{self.replica_rank}_step{self.global_steps}.json")
        profiler.export_chrome_trace(path)
        logger.info("hf rollout profile written to %s", path)

    async def shutdown(self) -> None:
        """Abort requests and stop background tasks (tests and clean exits)."""
        if self.batcher is not None:
            await self.batcher.close()
        self._executor.shutdown(wait=False)
        if self._http_task is not None:
            self._http_server.should_exit = True
            try:
                await asyncio.wait_for(self._http_task, timeout=5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._http_task.cancel()
            self._http_task = None


def _init_compute_thread(num_threads: int | None) -> None:
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))


def _replace(options: SamplingOptions, **changes: Any) -> SamplingOptions:
    from dataclasses import replace

    return replace(options, **changes)


def _named_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # The names the actor's state_dict uses: parameters under every name (tied embeddings answer to both)
    # and persistent buffers; keep_vars returns the live tensors, so copying into them updates the model.
    return dict(model.state_dict(keep_vars=True))


def _profile_dir(config: Any) -> str | None:
    profiler = getattr(config, "profiler", None)
    if profiler is None or not getattr(profiler, "enable", False):
        return None
    return getattr(profiler, "save_path", None)


def _node_ip() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address().strip("[]")
    except Exception:  # outside Ray (tests): loopback is the honest answer
        pass
    return "127.0.0.1"
