"""``tessera predict``: batch inference on a file, through vLLM's offline API, transformers, or ONNX Runtime for an
ONNX export.

Inputs are a ``.txt`` file (one text per line) or a ``.csv`` / ``.jsonl`` file with a text column. The
predictions go next to the input as JSON Lines, written atomically: ``{"text", "label", "probabilities"}`` per
row for a classifier, ``{"prompt", "completion"}`` for a causal LM. A run is predicted with its merged export, its
inputs enriched by its ``kg`` retrievers as in training; an output-space ensemble with each member, combined as the
ensemble stage did (:func:`tessera.serving.ensemble.predict_ensemble`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tessera.core.errors import DataError
from tessera.core.files import write_text
from tessera.serving.target import ServeError, ServeTarget


def read_texts(path: Path, text_column: str) -> list[str]:
    """The input texts of ``path``: ``.txt`` lines, or the ``text_column`` of a ``.csv`` / ``.jsonl`` file."""
    from tessera.core.data import read_pairs

    suffix = path.suffix.lower()
    if suffix == ".txt":
        if not path.is_file():
            raise DataError(f"input file {path} does not exist: pass an existing .txt, .csv or .jsonl file")
        texts = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    elif suffix in (".csv", ".jsonl"):
        texts = [text for text, _ in read_pairs(path, suffix[1:], text_column, None)]
    else:
        raise DataError(f"cannot read {path}: give a .txt (one text per line), .csv or .jsonl file")
    if not texts:
        raise DataError(f"{path} holds no texts: add one per line (or rows with a '{text_column}' column)")
    return texts


def _vllm_results(target: ServeTarget, settings, texts: list[str], options: dict) -> list:
    from tessera.serving.launcher import (
        engine_arguments,
        error_line,
        scratch_directory,
        stop_process_group,
        vllm_environment,
    )

    scratch = scratch_directory("tessera-predict-")
    try:
        engine = {**engine_arguments(target, settings), "seed": 0}
        length = target.truncation
        spec = {
            "engine": engine,
            "kind": target.kind,
            "texts": texts,
            "result": str(scratch / "result.json"),
            "adapter": next(([name, str(path)] for name, path in target.adapters.items()), None),
            "tokenization": {"truncation": True, "max_length": length} if length else None,
            **options,
        }
        (scratch / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        process = subprocess.Popen(
            [sys.executable, "-m", "tessera.serving.offline", str(scratch / "spec.json")],
            env=vllm_environment(scratch, settings),
            cwd=scratch,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output, _ = process.communicate()
        finally:
            stop_process_group(process, grace=5.0)
        if process.returncode != 0:
            lines = output.decode("utf-8", "replace").splitlines()
            raise ServeError(f"vLLM failed on {target.model_dir}: {error_line(lines)} (or use --engine transformers)")
        return json.loads((scratch / "result.json").read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _transformers_results(target: ServeTarget, settings, texts: list[str], options: dict) -> list:
    import torch
    import transformers
    from transformers import AutoTokenizer

    from tessera.serving.settings import dtype_for

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    dtype = getattr(torch, dtype_for(settings, target.kind, target.model_dir))
    tokenizer = AutoTokenizer.from_pretrained(target.model_dir)
    auto = "AutoModelForSequenceClassification" if target.kind == "classify" else "AutoModelForCausalLM"
    model = getattr(transformers, auto).from_pretrained(target.model_dir, dtype=dtype)
    for path in target.adapters.values():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path)
    model.eval()
    results = []
    with torch.inference_mode():
        if target.kind == "classify":
            length = target.truncation
            for start in range(0, len(texts), 32):
                batch = tokenizer(
                    texts[start : start + 32], truncation=True, max_length=length, padding=True, return_tensors="pt"
                )
                results += torch.softmax(model(**batch).logits.float(), dim=-1).tolist()
            return results
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        prompts = texts
        if options["chat"]:
            prompts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
                )
                for text in texts
            ]
        sampling = (
            {"do_sample": True, "temperature": options["temperature"]}
            if options["temperature"] > 0
            else {"do_sample": False}
        )
        torch.manual_seed(0)
        for start in range(0, len(prompts), 8):
            batch = tokenizer(
                prompts[start : start + 8], padding=True, return_tensors="pt", add_special_tokens=not options["chat"]
            )
            generated = model.generate(
                **batch, max_new_tokens=options["max_tokens"], pad_token_id=tokenizer.pad_token_id, **sampling
            )
            results += tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return results


def _onnxruntime_results(target: ServeTarget, settings, texts: list[str], options: dict) -> list:
    import torch
    from transformers import AutoTokenizer

    from tessera.core.onnx_model import OnnxClassifier

    tokenizer = AutoTokenizer.from_pretrained(target.model_dir)
    model = OnnxClassifier.from_directory(target.model_dir)
    results = []
    for start in range(0, len(texts), 32):
        batch = tokenizer(
            texts[start : start + 32], truncation=True, max_length=target.truncation, padding=True, return_tensors="pt"
        )
        results += torch.softmax(model(**batch).logits.float(), dim=-1).tolist()
    return results


def choose_engine(engine: str, target: ServeTarget) -> str:
    """``vllm``, ``transformers`` or ``onnxruntime`` for ``target``: ``auto`` takes ONNX Runtime for an ONNX export
    (the only engine that runs it), else vLLM when it is installed and serves the export, else transformers."""
    import importlib.util

    from tessera.core.onnx_model import ONNX_FILE
    from tessera.serving.target import vllm_refusal

    onnx = (target.model_dir / ONNX_FILE).is_file()
    refusal = vllm_refusal(target.model_dir)
    if engine == "auto":
        if onnx:
            return "onnxruntime"
        return "vllm" if importlib.util.find_spec("vllm") is not None and not refusal else "transformers"
    if onnx and engine != "onnxruntime":
        raise ServeError(
            f"{target.model_dir} is an ONNX export, which only ONNX Runtime runs: use --engine onnxruntime"
        )
    if engine == "onnxruntime" and not onnx:
        raise ServeError(
            f"{target.model_dir} is no ONNX export (no {ONNX_FILE}; compress=onnx writes one): use --engine auto"
        )
    if engine == "vllm":
        if refusal:
            raise ServeError(refusal)
        from tessera.serving.launcher import ensure_vllm

        ensure_vllm()
    return engine


def _classified(texts: list[str], names: list[str], results: list) -> list[dict]:
    """A classifier's rows: the text, the most probable label and every label's probability."""
    return [
        {"text": text, "label": names[max(range(len(p)), key=p.__getitem__)], "probabilities": dict(zip(names, p))}
        for text, p in zip(texts, results)
    ]


def _rows(target: ServeTarget, texts: list[str], inputs: list[str], results: list) -> list[dict]:
    if target.kind == "classify":
        config = json.loads((target.model_dir / "config.json").read_text(encoding="utf-8"))
        names = [config.get("id2label", {}).get(str(i), f"LABEL_{i}") for i in range(len(results[0]))]
        rows = _classified(texts, names, results)
    else:
        rows = [{"prompt": text, "completion": completion} for text, completion in zip(texts, results)]
    if inputs != texts:
        for row, model_input in zip(rows, inputs):
            row["model_input"] = model_input
    return rows


def predict_file(
    path,
    file: Path,
    output: Path | None = None,
    text_column: str = "text",
    engine: str = "auto",
    max_tokens: int = 64,
    temperature: float = 0.0,
    chat: bool = False,
    overrides: list[str] = (),
) -> tuple[Path, str, int]:
    """Predict every text of ``file`` with the model of ``path``; ``(output file, engine used, count)``."""
    from tessera.core.plugins import discover
    from tessera.serving.ensemble import ensemble_export, predict_ensemble
    from tessera.serving.settings import load_settings
    from tessera.serving.target import resolve, run_config

    plugins = discover()
    settings = load_settings(run_config(path), overrides)
    file = Path(file)
    output = output or file.with_name(f"{file.stem}.predictions.jsonl")
    if ensemble_export(path) is not None:
        if engine == "onnxruntime":
            raise ServeError(f"{path} is an output-space ensemble of Hugging Face members: use --engine auto")
        texts = read_texts(file, text_column)
        names, results, engine = predict_ensemble(path, texts, engine, settings)
        write_text(
            output, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in _classified(texts, names, results))
        )
        return output, engine, len(texts)
    target = resolve(path, plugins, name=settings.name, merged=True)
    texts = read_texts(file, text_column)
    inputs = texts
    if target.has_knowledge:
        from tessera.serving.knowledge import KnowledgeFront

        inputs = KnowledgeFront.from_run_dir(target.run_dir, plugins).enrich(texts)
    engine = choose_engine(engine, target)
    options = {"max_tokens": max_tokens, "temperature": temperature, "chat": chat}
    produce = {"vllm": _vllm_results, "transformers": _transformers_results, "onnxruntime": _onnxruntime_results}[
        engine
    ]
    rows = _rows(target, texts, inputs, produce(target, settings, inputs, options))
    write_text(output, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return output, engine, len(rows)
