"""The Reconstructor: a user model wrapped with the MRI forward operator, as an ART estimator.

Two input domains (DESIGN §3):

* ``image`` — post-processing networks (fastMRI ``Unet``): the adapter forms the zero-filled
  magnitude, centre-crops it to the target size, normalises it per instance
  (``(x - mean) / std`` clamped to ±6) and feeds ``(B, 1, h, w)``; the output is de-normalised.
* ``kspace`` — unrolled networks (fastMRI ``VarNet``): ``forward(masked_kspace, mask)`` with
  ``masked_kspace (B, coils, H, W, 2)`` (real view) and ``mask (B, 1, 1, W, 1)`` bool, plus
  ``num_low_frequencies`` when the forward accepts it; the ``(B, H, W)`` output is centre-cropped.

Two ways in:

* the fast path for mri-audit's own attacks, :meth:`Reconstructor.reconstruct`, takes torch
  tensors on the model's device and is differentiable;
* ART's numpy API (:meth:`predict`, :meth:`loss_gradient`, :meth:`compute_loss`), where ``x`` is
  the undersampled k-space as a real view ``(B, coils, H, W, 2)``. The sampling mask is the set of
  columns holding any non-zero value (unacquired columns of undersampled k-space are exactly zero),
  unless a fixed ``mask`` is given to the estimator. ``y`` is the target magnitude ``(B, h, w)``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from mri_audit.models import DOMAINS, NORMALIZATIONS
from mri_audit.models.art_setup import LossGradientsMixin, PyTorchEstimator
from mri_audit.models.sampling import ModelCall, accepts_generator
from mri_audit.mri.operator import SamplingOperator
from mri_audit.mri.physics import center_crop

__all__ = ["Reconstructor", "DOMAINS", "NORMALIZATIONS", "CLAMP"]

logger = logging.getLogger(__name__)

CLAMP = 6.0
_EPS = 1e-11


def _accepts_num_low_frequencies(model: torch.nn.Module) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # TorchScript or builtins without a Python signature
        schema = getattr(getattr(model, "forward", None), "schema", None)
        return "num_low_frequencies" in str(schema or "")
    return "num_low_frequencies" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


class Reconstructor(PyTorchEstimator, LossGradientsMixin):
    """A reconstruction model plus its MRI forward operator, usable by ART and by mri-audit.

    Args:
        model: the user's ``nn.Module``.
        input_domain: ``"image"`` or ``"kspace"`` (see the module docstring).
        target_shape: ``(h, w)`` of the target; reconstructions are centre-cropped to it.
        normalize: ``"instance"`` (fastMRI's U-Net transform) or ``"none"`` (raw magnitudes);
            image domain only.
        mask: optional fixed column mask ``(W,)`` used by the ART numpy API instead of
            inferring it from the zero columns of ``x``.
        device: where the model runs; defaults to the device of its first parameter.
        name: display name used in reports.
    """

    estimator_params = PyTorchEstimator.estimator_params + [
        "input_domain",
        "target_shape",
        "normalize",
    ]

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        input_domain: str = "image",
        target_shape: Sequence[int],
        normalize: str = "instance",
        mask: np.ndarray | torch.Tensor | None = None,
        device: torch.device | str | None = None,
        name: str | None = None,
    ) -> None:
        if input_domain not in DOMAINS:
            raise ValueError(f"input domain must be one of {DOMAINS}, got {input_domain!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if device is None:
            first = next(iter(model.parameters()), None)
            device = first.device if first is not None else torch.device("cpu")
        device = torch.device(device)
        super().__init__(
            model=model,
            clip_values=None,
            channels_first=True,
            device_type="gpu" if device.type == "cuda" else "cpu",
        )
        self._device = device
        self.input_domain = input_domain
        self.target_shape = target_shape  # also sets self.operator
        self.normalize = normalize
        self.name = name or type(model).__name__
        self._fixed_mask = None if mask is None else torch.as_tensor(mask).to(torch.bool)
        self._pass_nlf = input_domain == "kspace" and _accepts_num_low_frequencies(model)
        self._input_shape: tuple[int, ...] = ()
        self.call = ModelCall(generator=accepts_generator(model))
        """How the model is called: as it is, per item (batch-coupled) or under keyed noise
        (stochastic); the dry run sets it (:mod:`mri_audit.models.behaviour`)."""
        self.samples = 1
        """Reconstructions per input that an audit averages (``--samples``; 1 when
        deterministic)."""

    # ------------------------------------------------------------------ properties
    @property
    def target_shape(self) -> tuple[int, int]:
        """``(h, w)`` reconstructions are centre-cropped to: the default given at construction,
        or the size of the batch at hand inside :meth:`cropping`."""
        return self._target_shape

    @target_shape.setter
    def target_shape(self, shape: Sequence[int]) -> None:
        self._target_shape = (int(shape[0]), int(shape[1]))
        # The MRI forward model the network is adapted to (its zero-filled input, the crop).
        self.operator = SamplingOperator(crop=self._target_shape)

    @contextlib.contextmanager
    def cropping(self, target_shape: Sequence[int]) -> Iterator[None]:
        """Crop to ``target_shape`` (the target size of the batch at hand) inside the block.

        A folder may hold volumes of different target sizes: every caller that runs the model
        on a batch crops to that batch's size, so a volume's results never depend on which
        other volume opened the model. The previous size is restored on exit.
        """
        saved = self._target_shape
        try:
            if (int(target_shape[0]), int(target_shape[1])) != saved:
                self.target_shape = target_shape
            yield
        finally:
            if self._target_shape != saved:
                self.target_shape = saved

    @property
    def model(self) -> torch.nn.Module:
        """The wrapped user model."""
        return self._model

    def compile(self) -> None:
        """Run the model through ``torch.compile`` (dynamic shapes) from now on (``--compile``);
        ``model`` is then the compiled wrapper, which shares the module's weights and modes."""
        self._model = torch.compile(self._model, dynamic=True)

    @property
    def device(self) -> torch.device:
        """The device the model runs on."""
        return self._device

    @property
    def fixed_mask(self) -> torch.Tensor | None:
        """The fixed column mask ``(W,)`` given at construction, if any."""
        return self._fixed_mask

    @property
    def input_shape(self) -> tuple[int, ...]:
        """ART input shape ``(coils, H, W, 2)`` of the last k-space seen (empty before)."""
        return self._input_shape

    # ------------------------------------------------------------------ fast path
    def zero_filled_input(self, masked_kspace: torch.Tensor) -> torch.Tensor:
        """The cropped zero-filled magnitude an image-domain model starts from.

        Shape:
            masked_kspace: ``(B, coils, H, W)`` complex; returns ``(B, h, w)``.
        """
        return self.operator.magnitude(masked_kspace)

    def reconstruct(
        self,
        masked_kspace: torch.Tensor,
        mask: torch.Tensor,
        *,
        num_low_frequencies: int | None = None,
        zero_filled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Reconstruct a batch of undersampled k-space (differentiable; no mode changes).

        Args:
            masked_kspace: undersampled k-space, unacquired columns zero.
            mask: column mask, bool, broadcastable to ``(B, 1, 1, W)``.
            num_low_frequencies: centre columns acquired (passed to k-space models that take it).
            zero_filled: the cropped zero-filled magnitude of ``masked_kspace`` when the caller
                has it already (image domain; saves an inverse FFT).

        Returns:
            The reconstructed magnitude in the units of the target.

        Shape:
            masked_kspace: ``(B, coils, H, W)`` complex; mask: ``(B|1, 1, 1, W)``;
            returns ``(B, h, w)`` real.
        """
        if masked_kspace.ndim != 4 or not masked_kspace.is_complex():
            raise ValueError(
                f"masked k-space must be complex (B, coils, H, W), got {tuple(masked_kspace.shape)}"
                f" {masked_kspace.dtype}"
            )
        batch = masked_kspace.shape[0]
        if self.input_domain == "image":
            image = self.zero_filled_input(masked_kspace) if zero_filled is None else zero_filled
            if self.normalize == "instance":
                mean = image.mean(dim=(-2, -1), keepdim=True)
                std = image.std(dim=(-2, -1), keepdim=True).clamp_min(_EPS)
                normed = ((image - mean) / std).clamp(-CLAMP, CLAMP)
                out = self._check_tensor(
                    self.call(self._model, [normed.unsqueeze(1)]), masked_kspace
                )
                # (normed is a fresh tensor: a model that edits its input in place cannot
                # reach the tool's own tensors)
                out = self._squeeze_channel(out) * std + mean
            else:
                # A copy: the zero-filled image is cached and reused by the tool.
                out = self.call(self._model, [image.unsqueeze(1).clone()])
                out = self._check_tensor(out, masked_kspace)
                out = self._squeeze_channel(out)
        else:
            mask5 = mask.to(torch.bool).reshape(mask.shape[0], 1, 1, -1, 1)
            mask5 = mask5.expand(batch, 1, 1, mask5.shape[-2], 1)
            kwargs = {}
            if self._pass_nlf and num_low_frequencies is not None:
                kwargs["num_low_frequencies"] = int(num_low_frequencies)
            # Copies: a model that edits its masked_kspace or mask in place must not change the
            # tensors the tool goes on using (the IP distance, the losses, other models).
            kspace5 = torch.view_as_real(masked_kspace).clone()
            out = self.call(self._model, [kspace5, mask5.clone()], **kwargs)
            out = self._check_tensor(out, masked_kspace)
            if out.ndim == 4 and out.shape[1] == 1:
                out = out[:, 0]
        if out.ndim != 3 or out.shape[0] != batch:
            raise ValueError(f"model output must be ({batch}, H, W), got {tuple(out.shape)}")
        if out.shape[-2] < self.target_shape[0] or out.shape[-1] < self.target_shape[1]:
            raise ValueError(
                f"model output {tuple(out.shape[-2:])} is smaller than the target "
                f"{self.target_shape}"
            )
        return center_crop(out, self.target_shape)

    @staticmethod
    def _check_tensor(out, like: torch.Tensor) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"model returned {type(out).__name__}, expected a tensor")
        if out.is_complex():
            raise TypeError(f"model returned a complex tensor ({out.dtype}); return the magnitude")
        if not out.is_floating_point():
            raise TypeError(f"model returned {out.dtype}; return a floating-point tensor")
        if out.device != like.device:
            raise TypeError(
                f"model returned a tensor on {out.device} for input on {like.device}; "
                "keep outputs on the input's device"
            )
        return out

    @staticmethod
    def _squeeze_channel(out: torch.Tensor) -> torch.Tensor:
        if out.ndim == 4 and out.shape[1] == 1:
            return out[:, 0]
        if out.ndim != 3:
            raise ValueError(f"image model output must be (B, 1, H, W), got {tuple(out.shape)}")
        return out

    @contextlib.contextmanager
    def evaluation(self, *, parameters_require_grad: bool = False) -> Iterator[None]:
        """Put the model in eval mode, freeze its parameters, and restore both on exit.

        Args:
            parameters_require_grad: keep parameter gradients on (False: gradients are only
                needed with respect to inputs, which saves memory).
        """
        model = self._model
        was_training = model.training
        flags = [(p, p.requires_grad) for p in model.parameters()]
        try:
            model.eval()
            if not parameters_require_grad:
                for p, _ in flags:
                    p.requires_grad_(False)
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            model.train(was_training)

    # ------------------------------------------------------------------ ART API
    def _to_complex(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        xt = torch.as_tensor(x, device=self._device)
        if xt.ndim != 5 or xt.shape[-1] != 2:
            raise ValueError(
                "ART input must be k-space as a real view (B, coils, H, W, 2), "
                f"got {tuple(xt.shape)}"
            )
        xt = xt.to(torch.float32)
        self._input_shape = tuple(xt.shape[1:])
        if self._fixed_mask is not None:
            mask = self._fixed_mask.to(self._device).reshape(1, 1, 1, -1)
        else:
            mask = (xt != 0).any(dim=-1).any(dim=1).any(dim=1)[:, None, None, :]
        return xt, mask

    def _predict_torch(self, xt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kspace = torch.view_as_complex(xt.contiguous()) * mask
        return self.reconstruct(kspace, mask)

    def predict(self, x, batch_size: int = 16, training_mode: bool = False, **kwargs):
        """Reconstruct undersampled k-space given as ART's numpy real view.

        Shape:
            x: ``(B, coils, H, W, 2)``; returns ``(B, h, w)`` (numpy for numpy input).
        """
        is_numpy = isinstance(x, np.ndarray)
        outs = []
        with self.evaluation(), torch.inference_mode():
            self._model.train(training_mode)
            for start in range(0, len(x), batch_size):
                xt, mask = self._to_complex(x[start : start + batch_size])
                outs.append(self._predict_torch(xt, mask))
        out = torch.cat(outs) if outs else torch.empty(0, *self.target_shape)
        return out.cpu().numpy() if is_numpy else out

    def compute_loss(self, x, y, reduction: str = "mean", **kwargs):
        """Mean squared error between the reconstruction of ``x`` (cropped to the size of
        ``y``) and the target ``y``."""
        is_numpy = isinstance(x, np.ndarray)
        yt = torch.as_tensor(y, device=self._device, dtype=torch.float32)
        with self.evaluation(), self.cropping(yt.shape[-2:]), torch.no_grad():
            xt, mask = self._to_complex(x)
            err = (self._predict_torch(xt, mask) - yt).square().flatten(1).mean(1)
            loss = {"mean": err.mean(), "sum": err.sum(), "none": err}[reduction]
        return loss.cpu().numpy() if is_numpy else loss

    def loss_gradient(self, x, y, training_mode: bool = False, **kwargs):
        """Gradient of the reconstruction MSE against ``y`` with respect to the k-space ``x``
        (the reconstruction is cropped to the size of ``y``).

        Shape:
            x: ``(B, coils, H, W, 2)``; y: ``(B, h, w)``; returns the shape of ``x``.
        """
        is_numpy = isinstance(x, np.ndarray)
        yt = torch.as_tensor(y, device=self._device, dtype=torch.float32)
        with self.evaluation(), self.cropping(yt.shape[-2:]):
            self._model.train(training_mode)
            xt, mask = self._to_complex(x)
            xt = xt.detach().requires_grad_(True)
            loss = (self._predict_torch(xt, mask) - yt).square().mean()
            (grad,) = torch.autograd.grad(loss, xt)
        grad = torch.nan_to_num(grad)
        return grad.cpu().numpy().astype(np.float32) if is_numpy else grad

    def fit(self, x, y, batch_size: int = 128, nb_epochs: int = 20, **kwargs) -> None:
        """Not supported here: fine-tune with ``mri-audit harden``."""
        raise NotImplementedError("Reconstructor.fit is not supported; use `mri-audit harden`")

    def get_activations(self, x, layer, batch_size: int = 128, framework: bool = False):
        """Not supported: reconstruction models have no fixed layer interface."""
        raise NotImplementedError("Reconstructor.get_activations is not supported")
