"""Self-conditioning: an unconditional model trained as a conditional one on k-means clusters of its data.

A class-conditional GAN or diffusion model covers every class and can be guided; an unconditional one has no labels to
lean on. Self-conditioning gives it labels it makes itself (Liu et al. 2020, "Diverse Image Generation via
Self-Conditioned GANs"; Hu et al. 2023, "Self-Guided Diffusion Models"): when a fit starts (and not when it resumes:
the clusters travel in the checkpoint under "self_conditioning"), k-means (gen_lightning/clustering.py) splits
`cluster_images` training examples, drawn with `cluster_seed`, into `num_clusters` clusters of their flattened values
(pixels). Each training example is labelled with its nearest centre (`labels_of`), the networks train on those labels
as a conditional model's train on classes, and sampling draws clusters in proportion to their sizes (`draw_clusters`),
so every cluster, and with it every mode the clusters separate, keeps its share of the samples. No dataset label is
read, and to every caller the model is unconditional (`conditional = False`: sample(n) takes no labels). The papers
cluster learned features (D's, or a self-supervised encoder's); these clusters are fixed, from pixels: on MNIST 200
k-means clusters of 20,000 digits hold 89.5% of their digits in their majority class (benchmarks/cluster_purity.py).

`SelfConditioning` is a mixin placed before the model class (`class SelfConditionedGAN(SelfConditioning, GAN)`); the
model's __init__ calls `init_self_conditioning`, and its networks take `num_classes: num_clusters`.
"""

from __future__ import annotations

import torch

from gen_lightning.clustering import kmeans, nearest
from gen_lightning.errors import ConfigError, check_rules


class SelfConditioning:
    """k-means clusters of the training data as the labels of an unconditional model (module docstring)."""

    conditional = False  # to callers: no labels in, none out

    def init_self_conditioning(self, num_clusters: int, cluster_images: int, cluster_seed: int) -> None:
        check_rules([
            (num_clusters >= 1, f"num_clusters must be >= 1, got {num_clusters}"),
            (cluster_images >= num_clusters, f"cluster_images ({cluster_images}) must be >= num_clusters ({num_clusters}): "
                                             "k-means needs at least one example a cluster"),
        ])
        self.num_clusters, self.cluster_images, self.cluster_seed = num_clusters, cluster_images, cluster_seed
        # plain tensors, not buffers: their shape is known only once the data is, and EMA must not average them
        self.cluster_centers: torch.Tensor | None = None  # (num_clusters, D), flattened examples
        self.cluster_sizes: torch.Tensor | None = None  # (num_clusters,) training examples of each, in the k-means subset

    def check_cluster_net(self, name: str, net: torch.nn.Module) -> None:
        """The net `name` must be conditioned on num_clusters classes."""
        have = getattr(net, "num_classes", None)
        if have != self.num_clusters:
            raise ConfigError(f"the {name} has num_classes={have} but {type(self).__name__} conditions it on "
                              f"{self.num_clusters} clusters; set model.init_args.{name}.init_args.num_classes: "
                              f"{self.num_clusters} (or num_clusters: {have})")

    # ---- the clusters -------------------------------------------------------------------
    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.cluster_centers is None:  # a resumed fit has its clusters from the checkpoint
            self.fit_clusters(self.trainer.datamodule)

    @torch.no_grad()
    def fit_clusters(self, dm) -> None:
        """k-means on `cluster_images` training examples of the DataModule `dm`, converted as the model sees them."""
        ds = dm.split("train")
        g = torch.Generator().manual_seed(self.cluster_seed)
        idx = torch.randperm(len(ds), generator=g)[: self.cluster_images]
        x, _ = ds.__getitems__(idx.tolist())
        if x.dtype == torch.uint8:  # images are stored as bytes and converted per batch (data/base.py)
            x = dm.convert(x, train=False)
        if x.shape[0] < self.num_clusters:
            raise ConfigError(f"num_clusters={self.num_clusters} but the training split has {x.shape[0]} examples; "
                              "lower num_clusters")
        centers, assign = kmeans(x.flatten(1).to(self.device), self.num_clusters,
                                 generator=torch.Generator(device=self.device).manual_seed(self.cluster_seed))
        self.cluster_centers, self.cluster_sizes = centers, torch.bincount(assign, minlength=self.num_clusters)

    def require_clusters(self) -> None:
        if self.cluster_centers is None:
            raise ConfigError(f"this {type(self).__name__} has no clusters yet: they are fitted when `gen fit` starts; "
                              "fit it, or load a checkpoint of a fitted one (--ckpt_path)")

    def labels_of(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The cluster of each example: its nearest centre (the dataset's labels y are never read)."""
        self.require_clusters()
        if self.cluster_centers.device != x.device:  # once, not every step (a checkpoint loads them on the CPU)
            self.cluster_centers = self.cluster_centers.to(x.device)
        return nearest(x.flatten(1).float(), self.cluster_centers)

    def draw_clusters(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n clusters drawn in proportion to their sizes, `(n,)` on the model's device."""
        self.require_clusters()
        weights = self.cluster_sizes.to(generator.device if generator is not None else self.device, torch.float)
        return torch.multinomial(weights, n, replacement=True, generator=generator).to(self.device)

    # ---- checkpoints --------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.cluster_centers is not None:
            checkpoint["self_conditioning"] = {"centers": self.cluster_centers.cpu(), "sizes": self.cluster_sizes.cpu()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("self_conditioning")
        if saved is None:
            return
        if saved["centers"].shape[0] != self.num_clusters:
            raise ConfigError(f"the checkpoint has {saved['centers'].shape[0]} clusters but the model is configured with "
                              f"num_clusters: {self.num_clusters}; use the config that trained it")
        self.cluster_centers, self.cluster_sizes = saved["centers"], saved["sizes"]
