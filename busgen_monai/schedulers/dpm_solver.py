r"""DPM-Solver++ multistep sampler for discrete-time DDPMs, with MONAI's scheduler API.

MONAI ships DDPM, DDIM, PNDM and rectified-flow schedulers but no DPM-Solver++, the sampler BUSGen uses.
:class:`DPMSolverMultistepScheduler` subclasses :class:`monai.networks.schedulers.Scheduler`, so noise
schedules (``schedule="linear_beta", beta_start=..., beta_end=...``), ``add_noise`` and ``get_velocity``
work exactly as in MONAI, and it drops into :meth:`monai.inferers.DiffusionInferer.sample` like
:class:`monai.networks.schedulers.DDIMScheduler`: ``set_timesteps(n)``, then for each ``t`` in
``scheduler.timesteps``: ``prev_sample, pred_original_sample = scheduler.step(model_output, t, sample)``.

Reference: C. Lu, Y. Zhou, F. Bao, J. Chen, C. Li, J. Zhu, "DPM-Solver++: Fast Solver for Guided Sampling
of Diffusion Probabilistic Models", 2022, arXiv:2211.01095 (multistep second-order solver, "2M").

Maths
-----
For the training schedule with cumulative products :math:`\bar\alpha_t = \prod_{i \le t}(1 - \beta_i)`,
the forward process is :math:`x_t = \alpha_t x_0 + \sigma_t \epsilon` with

.. math::

    \alpha_t = \sqrt{\bar\alpha_t}, \qquad \sigma_t = \sqrt{1 - \bar\alpha_t}, \qquad
    \lambda_t = \log\alpha_t - \log\sigma_t \quad (\text{half the log-SNR}).

Every network output is first converted to a *data prediction* :math:`\hat x_0` (apply classifier-free
guidance to the network output before calling :meth:`~DPMSolverMultistepScheduler.step`):

- ``epsilon``: :math:`\hat x_0 = (x_t - \sigma_t \hat\epsilon) / \alpha_t`
- ``sample``: :math:`\hat x_0` is the output itself
- ``v_prediction``: :math:`\hat x_0 = \alpha_t x_t - \sigma_t \hat v`

and optionally dynamically thresholded / clipped (below). With the inference grid
:math:`t_0 > t_1 > \dots > t_{N-1}` (``self.timesteps``) one step goes from :math:`s = t_i` to
:math:`t = t_{i+1}`, with :math:`h = \lambda_t - \lambda_s > 0`:

- order 1 (identical to deterministic DDIM):

  .. math:: x_t = \frac{\sigma_t}{\sigma_s} x_s - \alpha_t (e^{-h} - 1)\, \hat x_0(s)

- order 2 multistep (DPM-Solver++(2M)), using the data prediction of the previous step
  :math:`u = t_{i-1}`, :math:`h_{\text{prev}} = \lambda_s - \lambda_u`, :math:`r = h_{\text{prev}} / h`:

  .. math::

      D = \frac{\hat x_0(s) - \hat x_0(u)}{r}, \qquad
      x_t = \frac{\sigma_t}{\sigma_s} x_s - \alpha_t (e^{-h} - 1) \left(\hat x_0(s) + \tfrac{1}{2} D\right)

The first step (no history) is always order 1. The update is computed in float32 (float64 when the sample is
float64) with the scalar coefficients evaluated in float64; :math:`e^{-h} - 1` uses ``expm1``.

Where the last step goes (``final_sigmas_type``)
------------------------------------------------
After the last grid point :math:`t_{N-1}` the solver needs a target :math:`t_N`:

- ``"zero"`` (default, as diffusers' ``final_sigmas_type="zero"``): the target is clean data,
  :math:`\bar\alpha = 1`, :math:`\sigma = 0`. There :math:`\lambda = +\infty`, so it is never evaluated: the
  order-1 update in the limit :math:`h \to \infty` is exactly :math:`x_{\text{final}} = \hat x_0(t_{N-1})`, which is
  what the last :meth:`~DPMSolverMultistepScheduler.step` returns (the order-2 correction has no finite limit,
  so this last step is always order 1).
- ``"sigma_min"``: the target is training timestep 0, :math:`\bar\alpha = \bar\alpha_0` (like DDIM with
  ``set_alpha_to_one=False``); then the last step is order 1 only when ``lower_order_final`` and
  :math:`N < 15`, as in the reference implementations.

Timestep grids (``timestep_spacing``, names and values as diffusers, Table 2 of arXiv:2305.08891)
-------------------------------------------------------------------------------------------------
With :math:`T` training steps and :math:`N` inference steps:

- ``"linspace"``: ``round(linspace(0, T - 1, N + 1))`` reversed, dropping the final 0
  (e.g. T=1000, N=10: 999, 899, ..., 100);
- ``"leading"``: ``arange(N + 1) * (T // (N + 1))`` reversed, dropping the final 0, plus ``steps_offset``;
- ``"trailing"``: ``round(arange(T, 0, -T / N)) - 1`` (e.g. T=1000, N=10: 999, 899, ..., 99).

Duplicated timesteps (only possible when N is close to T) are removed with a warning.

Dynamic thresholding (Saharia et al., Imagen, arXiv:2205.11487)
----------------------------------------------------------------
With ``thresholding=True`` each data prediction is, per batch item, thresholded at
:math:`s = \mathrm{clamp}(\mathrm{quantile}(|\hat x_0|, \text{ratio}), 1, \text{sample\_max\_value})`:
:math:`\hat x_0 \leftarrow \mathrm{clamp}(\hat x_0, -s, s) / s`. With the default ``sample_max_value=1`` this is
plain clipping to [-1, 1]. Only meaningful for pixel-space models whose data lie in [-1, 1].
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from monai.networks.schedulers import Scheduler
from monai.networks.schedulers.ddpm import DDPMPredictionType

__all__ = ["DPMSolverMultistepScheduler", "DPMSolverPredictionType", "TIMESTEP_SPACINGS", "FINAL_SIGMAS_TYPES"]

DPMSolverPredictionType = DDPMPredictionType

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")

# diffusers' (and the DPM-Solver authors') rule: below this many steps use order 1 for the last step(s)
_LOWER_ORDER_FINAL_BELOW = 15


class DPMSolverMultistepScheduler(Scheduler):
    """DPM-Solver++ multistep (orders 1 and 2) for discrete-time diffusion models, deterministic (ODE) sampling.

    See the module docstring for the maths, the timestep grids and where the final step lands.

    The scheduler keeps the data prediction of the previous step for the second-order update. That history is
    cleared by :meth:`set_timesteps` and :meth:`reset`, and automatically whenever :meth:`step` is called with a
    timestep that does not follow the previous one (for example a new sampling loop starting again at
    ``timesteps[0]``), so one scheduler can be reused for many :meth:`monai.inferers.DiffusionInferer.sample`
    calls. Do not interleave two sampling loops on one scheduler instance.

    Args:
        num_train_timesteps: number of diffusion steps used to train the model.
        schedule: member of ``monai.networks.schedulers.NoiseSchedules``, name of the noise schedule function.
        solver_order: 1 (DDIM-equivalent) or 2 (DPM-Solver++(2M), recommended with guidance).
        prediction_type: member of ``DDPMPredictionType``: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
        thresholding: apply Imagen dynamic thresholding to the data prediction (pixel-space models only).
        dynamic_thresholding_ratio: percentile (as a fraction in (0, 1]) of absolute values used by thresholding.
        sample_max_value: upper bound (>= 1) for the thresholding value ``s``.
        timestep_spacing: ``"linspace"``, ``"leading"`` or ``"trailing"`` (see module docstring).
        lower_order_final: use order 1 for the final step when fewer than 15 inference steps are used
            (only matters with ``final_sigmas_type="sigma_min"``: a final step to sigma = 0 is always order 1).
        clip_sample: clip the data prediction to ``[clip_sample_min, clip_sample_max]``.
        final_sigmas_type: ``"zero"`` (last step returns the clean-data estimate) or ``"sigma_min"``
            (last step lands on training timestep 0).
        steps_offset: offset added to the ``"leading"`` grid (as in diffusers / MONAI DDIM).
        clip_sample_min: minimum for ``clip_sample``.
        clip_sample_max: maximum for ``clip_sample``.
        schedule_args: keyword arguments for the schedule function, e.g. ``beta_start``, ``beta_end``.

    Example::

        scheduler = DPMSolverMultistepScheduler(num_train_timesteps=500, beta_start=1e-4, beta_end=0.028)
        scheduler.set_timesteps(25)
        image = DiffusionInferer(scheduler).sample(torch.randn(1, 3, 160, 160), unet, scheduler=scheduler)
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "linear_beta",
        solver_order: int = 2,
        prediction_type: str = DDPMPredictionType.EPSILON,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "linspace",
        lower_order_final: bool = True,
        clip_sample: bool = False,
        final_sigmas_type: str = "zero",
        steps_offset: int = 0,
        clip_sample_min: float = -1.0,
        clip_sample_max: float = 1.0,
        **schedule_args,
    ) -> None:
        super().__init__(num_train_timesteps, schedule, **schedule_args)

        if solver_order not in (1, 2):
            raise ValueError(f"`solver_order` must be 1 or 2, got {solver_order!r}.")
        if prediction_type not in DDPMPredictionType.__members__.values():
            raise ValueError(
                f"`prediction_type` must be a member of DDPMPredictionType "
                f"({', '.join(DDPMPredictionType.__members__.values())}), got {prediction_type!r}."
            )
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"`timestep_spacing` must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}.")
        if final_sigmas_type not in FINAL_SIGMAS_TYPES:
            raise ValueError(f"`final_sigmas_type` must be one of {FINAL_SIGMAS_TYPES}, got {final_sigmas_type!r}.")
        if not 0.0 < dynamic_thresholding_ratio <= 1.0:
            raise ValueError(
                f"`dynamic_thresholding_ratio` must be in (0, 1] (a percentile as a fraction), "
                f"got {dynamic_thresholding_ratio!r}."
            )
        if sample_max_value < 1.0:
            raise ValueError(f"`sample_max_value` must be >= 1 (thresholding never expands), got {sample_max_value!r}.")
        if clip_sample_min >= clip_sample_max:
            raise ValueError(
                f"`clip_sample_min` ({clip_sample_min}) must be smaller than `clip_sample_max` ({clip_sample_max})."
            )
        if not 0 <= steps_offset < num_train_timesteps:
            raise ValueError(f"`steps_offset` must be in [0, {num_train_timesteps}), got {steps_offset!r}.")
        alphas_cumprod64 = self.alphas_cumprod.detach().to("cpu", torch.float64)
        if not bool(torch.all((alphas_cumprod64 > 0) & (alphas_cumprod64 < 1))):
            raise ValueError("The noise schedule must give 0 < alphas_cumprod < 1 at every training timestep.")

        self.solver_order = solver_order
        self.prediction_type = prediction_type
        self.thresholding = thresholding
        self.dynamic_thresholding_ratio = dynamic_thresholding_ratio
        self.sample_max_value = sample_max_value
        self.timestep_spacing = timestep_spacing
        self.lower_order_final = lower_order_final
        self.clip_sample = clip_sample
        self.clip_sample_values = [clip_sample_min, clip_sample_max]
        self.final_sigmas_type = final_sigmas_type
        self.steps_offset = steps_offset
        # standard deviation of the initial noise distribution (as MONAI's DDIM)
        self.init_noise_sigma = 1.0

        # private float64 copy: Scheduler.add_noise re-casts self.alphas_cumprod to the sample's dtype/device
        self._alphas_cumprod64 = alphas_cumprod64

        # until set_timesteps is called, run over every training timestep (MONAI's DDIM default)
        self.num_inference_steps: int
        self._set_grid(np.arange(num_train_timesteps - 1, -1, -1, dtype=np.int64), device=None)

    # ------------------------------------------------------------------ timesteps
    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Set the inference timestep grid (run before sampling) and clear the multistep history.

        Args:
            num_inference_steps: number of solver steps (= network evaluations), 1 <= n <= ``num_train_timesteps``.
            device: device for ``self.timesteps``.

        Raises:
            ValueError: if ``num_inference_steps`` is not an integer in [1, ``num_train_timesteps``].
        """
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise ValueError(
                f"`num_inference_steps` must be an int, got {num_inference_steps!r} "
                f"({type(num_inference_steps).__name__})."
            )
        num_inference_steps = int(num_inference_steps)
        if num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be at least 1, got {num_inference_steps}.")
        if num_inference_steps > self.num_train_timesteps:
            raise ValueError(
                f"`num_inference_steps`: {num_inference_steps} cannot be larger than `self.num_train_timesteps`:"
                f" {self.num_train_timesteps} as the unet model trained with this scheduler can only handle"
                f" maximal {self.num_train_timesteps} timesteps."
            )

        T, n = self.num_train_timesteps, num_inference_steps
        if self.timestep_spacing == "linspace":
            grid = np.linspace(0, T - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        elif self.timestep_spacing == "leading":
            step_ratio = T // (n + 1)
            grid = (np.arange(0, n + 1) * step_ratio).round()[::-1][:-1].astype(np.int64) + self.steps_offset
        else:  # trailing
            grid = np.arange(T, 0, -T / n).round().astype(np.int64) - 1
        grid = np.clip(grid, 0, T - 1)

        _, first = np.unique(grid, return_index=True)
        if len(first) < len(grid):
            warnings.warn(
                f"timestep_spacing={self.timestep_spacing!r} with {n} of {T} steps repeats timesteps; "
                f"using the {len(first)} distinct ones.",
                stacklevel=2,
            )
            grid = grid[np.sort(first)]
        self._set_grid(grid, device=device)

    def _set_grid(self, grid: np.ndarray, device: str | torch.device | None) -> None:
        """Store a descending integer grid, its alpha/sigma/lambda values (float64, CPU) and clear the history."""
        ac = self._alphas_cumprod64[torch.from_numpy(grid)]
        final = torch.ones(1, dtype=torch.float64) if self.final_sigmas_type == "zero" else self._alphas_cumprod64[:1]
        ac = torch.cat([ac, final])
        self._alpha = ac.sqrt()
        self._sigma = (1.0 - ac).sqrt()
        # lambda = log(alpha) - log(sigma); +inf where sigma == 0 (never used in an update)
        self._lambda = 0.5 * (torch.log(ac) - torch.log1p(-ac))
        self._grid = [int(t) for t in grid]
        self.timesteps = torch.as_tensor(grid.copy(), dtype=torch.long, device=device)
        self.num_inference_steps = len(grid)
        self.reset()

    def reset(self) -> None:
        """Forget the multistep history (the next step is first order)."""
        self._prev_x0: torch.Tensor | None = None
        self._prev_index: int | None = None
        self._step_index: int | None = None

    @property
    def step_index(self) -> int | None:
        """Index in ``self.timesteps`` of the next expected step (``None`` before the first step)."""
        return self._step_index

    def _index_for_timestep(self, timestep: int | torch.Tensor) -> int:
        if isinstance(timestep, torch.Tensor):
            values = timestep.detach().flatten()
            if values.numel() == 0:
                raise ValueError("`timestep` is an empty tensor.")
            if values.numel() > 1 and not bool(torch.all(values == values[0])):
                raise ValueError(
                    "`timestep` must be one value for the whole batch (an int or 0-d tensor); "
                    f"got different values {values.tolist()}."
                )
            value = values[0].item()
        else:
            value = timestep
        if float(value) != int(value):
            raise ValueError(f"`timestep` must be an integer training timestep, got {value!r}.")
        t = int(value)

        expected = self._step_index
        if expected is not None and expected < len(self._grid) and self._grid[expected] == t:
            return expected
        try:
            return self._grid.index(t)
        except ValueError:
            raise ValueError(
                f"timestep {t} is not in this scheduler's inference grid {self._grid}; pass the values of "
                "`scheduler.timesteps` in order (after `scheduler.set_timesteps(num_inference_steps)`)."
            ) from None

    # ------------------------------------------------------------------ data prediction
    def _threshold_sample(self, x0: torch.Tensor) -> torch.Tensor:
        """Imagen dynamic thresholding, per batch item (see module docstring). Returns a tensor like ``x0``."""
        batch = x0.shape[0]
        flat = x0.reshape(batch, -1)
        # linear-interpolated quantile of |x0| (as torch.quantile, without its input size limit)
        sorted_abs = flat.abs().sort(dim=1).values
        pos = self.dynamic_thresholding_ratio * (flat.shape[1] - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, flat.shape[1] - 1)
        frac = pos - lo
        s = sorted_abs[:, lo] + frac * (sorted_abs[:, hi] - sorted_abs[:, lo])
        s = s.clamp(min=1.0, max=self.sample_max_value).unsqueeze(1)
        return (torch.maximum(torch.minimum(flat, s), -s) / s).reshape(x0.shape)

    def convert_model_output(self, model_output: torch.Tensor, index: int, sample: torch.Tensor) -> torch.Tensor:
        """Convert the network output at grid position ``index`` to the (thresholded / clipped) data prediction.

        Args:
            model_output: network output, shape (B, C, *spatial).
            index: position of the current timestep in ``self.timesteps``.
            sample: current noisy sample x_t, same shape.

        Returns:
            the data prediction x0, same shape and dtype as the inputs.
        """
        alpha, sigma = float(self._alpha[index]), float(self._sigma[index])
        if self.prediction_type == DDPMPredictionType.EPSILON:
            x0 = (sample - sigma * model_output) / alpha
        elif self.prediction_type == DDPMPredictionType.SAMPLE:
            x0 = model_output
        else:  # V_PREDICTION
            x0 = alpha * sample - sigma * model_output
        if self.thresholding:
            x0 = self._threshold_sample(x0)
        if self.clip_sample:
            x0 = torch.clamp(x0, self.clip_sample_values[0], self.clip_sample_values[1])
        return x0

    # ------------------------------------------------------------------ step
    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DPM-Solver++ step from ``timestep`` to the next timestep of the grid (or to the final target).

        Args:
            model_output: network output at (``sample``, ``timestep``), shape (B, C, *spatial); apply
                classifier-free guidance before passing it.
            timestep: current timestep, an element of ``self.timesteps`` (int, 0-d tensor, or a tensor whose
                values are all equal, one per batch item).
            sample: current sample x_t, shape (B, C, *spatial).
            generator: unused (the solver is deterministic); accepted for API compatibility with MONAI's DDIM.

        Returns:
            ``(prev_sample, pred_original_sample)``: the sample at the next grid timestep (after the last step:
            the final sample, see ``final_sigmas_type``) and the data prediction x0 at ``timestep``, both with
            ``sample``'s shape and dtype.
        """
        if model_output.shape != sample.shape:
            raise ValueError(
                f"`model_output` shape {tuple(model_output.shape)} must equal `sample` shape {tuple(sample.shape)} "
                "(a learned-variance network must be sliced to its mean channels first)."
            )
        i = self._index_for_timestep(timestep)
        n = len(self._grid)

        compute_dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
        x = sample.to(compute_dtype)
        x0 = self.convert_model_output(model_output.to(compute_dtype), i, x)

        prev_x0 = self._prev_x0
        use_history = self.solver_order == 2 and prev_x0 is not None and self._prev_index == i - 1
        if use_history and prev_x0.shape != x0.shape:  # type: ignore[union-attr]
            raise ValueError(
                f"sample shape {tuple(x0.shape)} differs from the previous step's "
                f"{tuple(prev_x0.shape)}; call `scheduler.reset()` (or `set_timesteps`) "  # type: ignore[union-attr]
                "before starting a new sampling loop."
            )
        last = i == n - 1
        if last and self.final_sigmas_type == "zero":
            # limit h -> inf of the order-1 update: sigma_t / sigma_s -> 0, -alpha_t (e^-h - 1) -> 1
            prev = x0.clone()
        else:
            lower_final = last and self.lower_order_final and n < _LOWER_ORDER_FINAL_BELOW
            alpha_t, sigma_t, sigma_s = float(self._alpha[i + 1]), float(self._sigma[i + 1]), float(self._sigma[i])
            h = float(self._lambda[i + 1] - self._lambda[i])
            c_x = sigma_t / sigma_s
            c_x0 = -alpha_t * math.expm1(-h)  # = alpha_t (1 - e^{-h})
            if use_history and not lower_final:
                r = float(self._lambda[i] - self._lambda[i - 1]) / h
                # x0 + D / 2 with D = (x0 - x0_prev) / r
                x0_eff = x0 + (0.5 / r) * (x0 - prev_x0)  # type: ignore[operator]
            else:
                x0_eff = x0
            prev = c_x * x + c_x0 * x0_eff

        self._prev_x0 = x0
        self._prev_index = i
        self._step_index = i + 1
        return prev.to(sample.dtype), x0.to(sample.dtype)
