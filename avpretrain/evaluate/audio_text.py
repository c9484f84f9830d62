"""Zero-shot classification and audio↔text retrieval with an exported audio-language model.

Both embed every clip of a split once in the joint space (``PretrainedEncoder.embed_audio``);
class prompts and captions go through the model's text side (``embed_text``). Captions come from
the stored caption embeddings of the model's sentence model when the dataset has them, else they
are encoded here (the ``text`` extra).
"""
from __future__ import annotations

import time

import numpy as np

from avpretrain import export
from avpretrain.data import pipeline, source
from avpretrain.evaluate import retrieval as metrics

DEFAULT_TEMPLATE = "{label} can be heard"


def _load(model_dir, data_dir):
    encoder = export.load_pretrained(model_dir)
    if not encoder.is_audio_language:
        raise ValueError(f"{model_dir} is a {encoder.config.method!r} encoder without a text side: zero-shot and "
                         "retrieval need an M2D-CLAP (stage 1) or M2D2 (stage 2) export")
    meta = source.dataset_meta(data_dir)
    if meta.sample_rate != encoder.sample_rate:
        raise ValueError(f"{data_dir} is at {meta.sample_rate} Hz but the model expects {encoder.sample_rate} Hz")
    return encoder, meta


def embed_audio_split(encoder, data_dir, split: str, batch_size: int = 64):
    """Joint-space audio embeddings [N, D] of every clip of ``split`` and the clips' records:
    dict of lists ``record``, ``id``, ``captions`` plus ``label``: int64 [N], or for a multi-label
    dataset float32 [N, C] multi-hot (``pipeline.eval_batches``)."""
    embs, info = [], {"record": [], "id": [], "captions": [], "label": []}
    for batch in pipeline.eval_batches(data_dir, split, batch_size=batch_size):
        embs.append(encoder.embed_audio(batch["audio"], batch_size=batch_size))
        for key in ("record", "id", "captions", "label"):
            info[key] += list(batch[key])
    if not embs:
        raise ValueError(f"split {split!r} of {data_dir} is empty")
    labels = np.stack(info["label"])
    info["label"] = labels if labels.ndim == 2 else labels.astype(np.int64)
    return np.concatenate(embs), info


def class_prompts(label_names, template: str = DEFAULT_TEMPLATE) -> list[str]:
    """One prompt per class: ``template`` with ``{label}`` → the class name ('_' read as a space)."""
    if "{label}" not in template:
        raise ValueError(f"--template {template!r} has no {{label}} placeholder")
    return [template.format(label=name.replace("_", " ")) for name in label_names]


def zero_shot(model_dir, data_dir, *, template: str = DEFAULT_TEMPLATE, split: str = "test",
              batch_size: int = 64) -> dict:
    """Each clip of ``split`` against one prompt per class, by cosine similarity.

    Single-label: ``accuracy`` (the nearest prompt is the clip's class), ``mAP`` over one-hot labels
    and ``chance`` (the majority class's share). Multi-label (``multi_label`` True): ``mAP``, the
    main figure (per class the clips ranked by similarity to its prompt; macro over the classes
    with a positive in the split, ``classes_without_positives`` counts those left out), ``prevalence``
    (the mean share of positives of those classes, about what a random ranking scores) and
    ``top1_hit`` (the share of clips with a class whose nearest prompt is one of their classes;
    ``clips_without_classes`` counts those left out); no accuracy or chance.
    """
    encoder, meta = _load(model_dir, data_dir)
    t0 = time.time()
    audio_emb, info = embed_audio_split(encoder, data_dir, split, batch_size)
    prompts = class_prompts(meta.label_names, template)
    text_emb = encoder.embed_text(prompts)
    labels = info["label"]
    common = {"model": str(model_dir), "data": str(data_dir), "split": split, "template": template,
              "multi_label": meta.multi_label}
    if meta.multi_label:
        positive_NC = labels > 0
        scored_C = positive_NC.any(axis=0)
        scores = {"mAP": metrics.zero_shot_map(audio_emb, text_emb, labels),
                  "prevalence": float(positive_NC.mean(axis=0)[scored_C].mean()),
                  "top1_hit": metrics.zero_shot_top1_hit(audio_emb, text_emb, labels),
                  "classes_without_positives": int((~scored_C).sum()),
                  "clips_without_classes": int((~positive_NC.any(axis=1)).sum())}
    else:
        one_hot = np.eye(len(prompts))[labels]
        scores = {"accuracy": metrics.zero_shot_accuracy(audio_emb, text_emb, labels),
                  "mAP": metrics.zero_shot_map(audio_emb, text_emb, one_hot),
                  "chance": float(np.max(np.bincount(labels)) / len(labels))}
    return common | scores | {"num_examples": int(len(labels)), "prompts": prompts, "seconds": time.time() - t0}


def caption_text_embeddings(encoder, data_dir, split, info) -> tuple[np.ndarray, np.ndarray, str]:
    """Joint-space embeddings of every caption of the clips in ``info`` and each caption's clip index.

    Uses the stored sentence embeddings of the model's text model when present, else encodes.
    """
    from avpretrain.data import captions as captions_lib

    stored = None
    if encoder.text_model in captions_lib.available_models(data_dir):
        stored = captions_lib.CaptionEmbeddings.open(data_dir, split, encoder.text_model)
    rows, owner = [], []
    for clip, (record, id_, caps) in enumerate(zip(info["record"], info["id"], info["captions"])):
        if stored is not None:
            if stored.ids[record] != id_:
                raise ValueError(f"stored caption embeddings of {split!r} do not match the dataset at record "
                                 f"{record} ({stored.ids[record]!r} vs {id_!r}): run embed-captions again")
            rows.append(np.asarray(stored.for_record(record), np.float32))
        owner += [clip] * len(caps)
    if not owner:
        raise ValueError(f"split {split!r} of {data_dir} has no captions: retrieval needs captioned clips")
    if stored is not None:
        return encoder.embed_text(np.concatenate(rows)), np.asarray(owner), "stored"
    texts = [c for caps in info["captions"] for c in caps]
    return encoder.embed_text(texts), np.asarray(owner), "encoded"


def retrieval(model_dir, data_dir, *, split: str = "test", batch_size: int = 64) -> dict:
    """Audio→text and text→audio R@1/5/10 and mAP@10 over all captions of ``split``."""
    encoder, _ = _load(model_dir, data_dir)
    t0 = time.time()
    audio_emb, info = embed_audio_split(encoder, data_dir, split, batch_size)
    text_emb, owner, origin = caption_text_embeddings(encoder, data_dir, split, info)
    return {"model": str(model_dir), "data": str(data_dir), "split": split,
            **metrics.retrieval_metrics(audio_emb, text_emb, owner),
            "num_audios": int(len(audio_emb)), "num_captions": int(len(owner)), "caption_embeddings": origin,
            "seconds": time.time() - t0}
