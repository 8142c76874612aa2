"""The HDF5 store: the one package that knows the schema (docs/store.md), crash-safe writes, the read API.

Layout (schema version 2)::

    /                         attrs: schema_version, atlas_version, model_spec, model_name, weights_sha256,
                                     image_size, data_source, data_fingerprint, n_images
    /images/                  source_id, caption, label, sha256, status (0 ok, else BadImage reason code),
                              reason, thumb_row (row in thumbs or -1), thumbs [M, T, T, 3] uint8
    /neurons/<model>/<layer>/ attrs: kind, units, grid, config (JSON of MineConfig)
        topk/values [U, k] float32, topk/index [U, k] int64 (-1: empty), topk/argmax [U, k] int32
                    (flat index into the layer's h x w grid), topk/maps [U, k, mh, mw] float32,
                    topk/replayed/ (optional): maps [U, k, mh', mw'] recomputed for some units by `atlas maps`, done [U]
        stats/mean, std, min, max [U] float64/float32, stats/count, positive, nonfinite, nonfinite_maps [U]
              int64, hist [U, bins] int64 over [-range, range], stats/range [U] float64
        pooled [N, U] float32 (optional): spatial mean per image and unit (NaN rows: skipped images)
        verify/ (optional): `atlas verify`'s last check of the layer against an independent recomputation
        featurevis/images [U, S, S, 3] uint8, objective [U] float32, done [U] bool; attrs config (channel kind)
        featurevis-neuron/, featurevis-diversity/, featurevis-faceted/<facet>/, featurevis-direction/<name>/: the
                    other kinds (store/featurevis.py)
    /facets/<model>/<name>/   weights [C] float32; attrs layer, bias, config (FacetConfig JSON), figures

The neuron ``model/layer/unit`` lives in group ``/neurons/model/layer``, row ``unit``.

Writes never modify the live file: `transaction` copies it, writes the copy and swaps it in with an
atomic rename, so a crash leaves either the old or the new store.  `lock` makes a second writer fail at
once.  This package imports no torch and knows no model, site or CLI.

Modules: `schema` (version, reason codes, paths, checks), `files` (work folder, lock, transactions, digest),
`write` (every writer), `featurevis` (visualizations of every kind and facets), `read` (`Store`, `LayerData`,
`read_report`), `sae` (sparse autoencoders' safetensors files beside the store).  Callers use the package: ``store.X``.
"""

from ..errors import StoreBusy, StoreError
from .featurevis import (Facet, Visualizations, group_name, read_visualizations, write_facet,
                         write_visualizations)
from .files import (check_unlocked, contents_digest, lock, remove_work, save_checkpoint, transaction,
                    work_dir)
from .read import LayerData, Store, read_report
from .sae import SaeFileError, read_sae, read_sae_file, sae_layers, sae_path, write_sae
from .schema import (CHECKS, REASON_CODES, REPORTS, SCHEMA_VERSION, check_compatible, check_schema, is_text,
                     layer_path)
from .write import (File, fletcher32, image_column_of, put, put_rows, set_json, thumbnail_table, write_check,
                    write_featurevis, write_images, write_layer, write_replayed_maps, write_report, write_run,
                    write_thumbnails)

__all__ = ["check_compatible", "check_schema", "check_unlocked", "CHECKS", "contents_digest", "Facet", "File",
           "fletcher32", "group_name", "image_column_of", "is_text", "layer_path", "LayerData", "lock", "put",
           "put_rows", "read_report", "read_sae", "read_sae_file", "read_visualizations", "REASON_CODES",
           "remove_work", "REPORTS", "sae_layers", "sae_path", "SaeFileError", "save_checkpoint", "SCHEMA_VERSION",
           "set_json", "Store", "StoreBusy", "StoreError", "thumbnail_table", "transaction", "Visualizations",
           "work_dir", "write_check", "write_facet", "write_featurevis", "write_images", "write_layer",
           "write_replayed_maps", "write_report", "write_run", "write_sae", "write_thumbnails",
           "write_visualizations"]
