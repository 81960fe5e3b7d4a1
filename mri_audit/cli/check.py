"""``mri-audit check``: load and validate a model, and report its clean metrics."""

from __future__ import annotations

import click

from mri_audit.cli.settings import checked, setting_options
from mri_audit.settings import CHECK


@click.command("check")
@setting_options(CHECK)
def check(**opts) -> None:
    """Load a model, dry-run it, and print its clean SSIM/NMSE/PSNR next to zero-filling."""
    import torch
    from tqdm import tqdm

    from mri_audit.data.datasets import iter_batches, valid_indices
    from mri_audit.data.opening import open_data
    from mri_audit.device import resolve_device
    from mri_audit.models.opening import open_models
    from mri_audit.mri.metrics import VolumeMetrics
    from mri_audit.mri.operator import SamplingOperator
    from mri_audit.mri.physics import make_mask_func, mask_to_tensor, volume_seed

    values = checked(CHECK, opts)
    model_spec, weights, model_args = (values[k] for k in ("model_spec", "weights", "model_args"))
    input_domain, normalize, device = (values[k] for k in ("input_domain", "normalize", "device"))
    accel, center_fraction, mask_type = (
        values[k] for k in ("accel", "center_fraction", "mask_type")
    )
    data, max_volumes, max_slices = (values[k] for k in ("data", "max_volumes", "max_slices"))
    batch_size = values["batch_size"]
    dev = resolve_device(device)
    mask_func = make_mask_func(mask_type, accel, center_fraction)
    dataset, probe = open_data(data, max_volumes, max_slices)
    (opened,) = open_models(
        [(model_spec, weights)],
        model_args=model_args,
        input_domain=input_domain,
        normalize=normalize,
        device=dev,
        probe=probe,
        mask_func=mask_func,
        need_gradient=False,
    )
    est = opened.estimator
    valid = valid_indices(dataset)  # invalid slices are counted, never given to the model
    model_m, zf_m = VolumeMetrics(), VolumeMetrics()
    masks: dict[str, torch.Tensor] = {}
    with est.evaluation(), torch.inference_mode():
        batches = iter_batches(dataset, batch_size, valid)
        for batch in tqdm(
            batches,
            total=-(-len(valid) // batch_size),
            desc="check",
            unit="batch",
            leave=False,
            disable=None,
        ):
            batch = batch.to(dev)
            cols = []
            for v in batch.volumes:
                if v not in masks:
                    m = mask_func(batch.kspace.shape[-1], seed=volume_seed(v))
                    masks[v] = torch.as_tensor(m.columns)
                cols.append(masks[v])
            mask = mask_to_tensor(torch.stack(cols), device=dev)
            masked = batch.kspace * mask
            nlf = mask_func(batch.kspace.shape[-1], seed=volume_seed(batch.volumes[0]))
            shape = tuple(batch.target.shape[-2:])  # volumes may differ in size
            with est.cropping(shape):
                recon = est.reconstruct(masked, mask, num_low_frequencies=nlf.num_low_frequencies)
            zf = SamplingOperator(crop=shape).magnitude(masked)
            model_m.update(batch.volumes, recon.float(), batch.target, batch.max_values)
            zf_m.update(batch.volumes, zf, batch.target, batch.max_values)
    m, z = model_m.summary(), zf_m.summary()
    described = dataset.describe()
    click.echo(f"model       {opened.loaded.name} ({opened.loaded.kind})")
    click.echo(f"domain      {est.input_domain}   normalize: {est.normalize}")
    click.echo(f"parameters  {opened.parameters:,} ({opened.trainable:,} trainable)")
    click.echo(f"device      {dev}")
    behaviour = getattr(est, "behaviour", None)
    if behaviour is not None:
        click.echo(f"behaviour   {behaviour.describe(est.samples)}")
    click.echo(
        f"data        {described.get('source', data)}: {len(valid)} slices, "
        f"{len(model_m)} volumes, {mask_type} mask {accel:g}x"
    )
    skipped = described.get("invalid_slices") or {}
    if skipped:
        counts = "; ".join(f"{reason}: {n}" for reason, n in skipped.items())
        click.echo(f"skipped     {sum(skipped.values())} invalid slices ({counts})")
    click.echo("")
    click.echo(f"{'':12}{'SSIM':>8}{'NMSE':>10}{'PSNR':>8}")
    click.echo(f"{'model':12}{m['ssim']:8.4f}{m['nmse']:10.5f}{m['psnr']:8.2f}")
    click.echo(f"{'zero-filled':12}{z['ssim']:8.4f}{z['nmse']:10.5f}{z['psnr']:8.2f}")
    click.echo(
        f"{'margin':12}{m['ssim'] - z['ssim']:+8.4f}{m['nmse'] - z['nmse']:+10.5f}"
        f"{m['psnr'] - z['psnr']:+8.2f}"
    )
