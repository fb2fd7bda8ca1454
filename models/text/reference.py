"""Reference outputs of the PyTorch implementations for Harambee's text-encoder tests.

Run by models/text/reference.sh (which makes the virtual environment, fetches the weights and
exports the adapters first); once, by hand, not in CI. Two commands:

  reference.py embeddings MODEL_DIR OUT.json
      all-MiniLM-L6-v2 sentence embeddings (sentence-transformers: mean pooling, then L2
      normalisation) and token ids of SENTENCES -> models/tests/fixtures/minilm_embeddings.json

  reference.py peft MODEL_DIR EXPORT_DIR OUT.json
      for every case that `cargo run -p harambee-models --example minilm_peft_export EXPORT_DIR`
      wrote: loads Harambee's adapter directory with PEFT (PeftModel.from_pretrained) onto
      transformers' BertModel of the same base, checks that every tensor of the file landed in a
      LoRA parameter, computes the classifier's logits (mean pooling, then the head from
      head.safetensors) and compares them with Harambee's own -> the key names, shapes, config and
      PEFT's logits in models/tests/fixtures/minilm_lora_peft.json
"""

import hashlib
import json
import os
import sys

import torch

SENTENCES = [
    "Patient presents with fever, cough and shortness of breath for three days.",
    "Blood pressure 160/95 mmHg; started on amlodipine 5 mg once daily.",
    "Child, 4 years, with severe dehydration after diarrhoea: refer to the district hospital.",
    "No known drug allergies.",
    "Pregnant woman at 32 weeks reports headache and blurred vision \u2014 check for pre-eclampsia.",
    "Malaria rapid diagnostic test positive; artemether-lumefantrine given.",
    "Le patient se plaint de douleurs abdominales depuis hier, tr\u00e8s fi\u00e9vreux.",
    "HbA1c 9.2% despite metformin; consider adding insulin. Review in 3 months at the NCD clinic.",
]

# Longest input in tokens for the classifier logits (the sentences are all shorter).
MAX_TOKENS = 128


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions():
    import peft
    import sentence_transformers
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "peft": peft.__version__,
    }


def write_json(path, obj):
    """JSON with one line per key, and per row of a list of lists (readable diffs)."""

    def fmt(value, indent):
        pad = " " * indent
        if isinstance(value, dict) and value:
            items = [f"{pad} {json.dumps(k)}: {fmt(v, indent + 1)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(value, list) and value and isinstance(value[0], (list, dict)):
            items = [f"{pad} {fmt(v, indent + 1)}" for v in value]
            return "[\n" + ",\n".join(items) + "\n" + pad + "]"
        return json.dumps(value)

    with open(path, "w") as f:
        f.write(fmt(obj, 0) + "\n")


def rounded(rows):
    return [[float(f"{v:.8g}") for v in row] for row in rows]


def embeddings(model_dir, out):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    model.eval()
    with torch.no_grad():
        emb = model.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False)
    ids = [model.tokenizer(s)["input_ids"] for s in SENTENCES]
    fixture = {
        "generated_by": "models/text/reference.py embeddings",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "model_sha256": sha256(os.path.join(model_dir, "model.safetensors")),
        "max_seq_length": model.max_seq_length,
        "versions": versions(),
        "sentences": SENTENCES,
        "input_ids": ids,
        "embeddings": rounded(emb.tolist()),
    }
    write_json(out, fixture)
    print(f"wrote {out}: {len(SENTENCES)} embeddings of width {emb.shape[1]}")


def peft_case(model_dir, case_dir, tokenizer, batch):
    from peft import PeftModel
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoModel

    base = AutoModel.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(base, case_dir)
    model.eval()

    # Every tensor of the file must have landed in a LoRA parameter of the model.
    saved = load_file(os.path.join(case_dir, "adapter_model.safetensors"))
    params = dict(model.named_parameters())
    lora_params = {k: v for k, v in params.items() if "lora_" in k}
    assert len(lora_params) == len(saved), (len(lora_params), len(saved))
    for key, value in saved.items():
        name = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        )
        assert name in lora_params, f"{key} did not load into the model"
        assert torch.equal(lora_params[name].detach(), value), key

    head = load_file(os.path.join(case_dir, "head.safetensors"))

    def logits(hidden):
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return pooled @ head["weight"].T + head["bias"]

    with torch.no_grad():
        out = logits(model(**batch).last_hidden_state)
        with model.disable_adapter():
            plain = logits(model(**batch).last_hidden_state)
    effect = (out - plain).abs().max().item()
    assert effect > 1e-2, f"the adapters change the logits by only {effect}"

    with safe_open(os.path.join(case_dir, "adapter_model.safetensors"), framework="pt") as f:
        keys = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    with open(os.path.join(case_dir, "adapter_config.json")) as f:
        config = json.load(f)
    return out, keys, config, effect


def peft(model_dir, export_dir, out):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(
        SENTENCES, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
    )
    with open(os.path.join(export_dir, "cases.json")) as f:
        cases = json.load(f)
    results = []
    for case in cases:
        case_dir = os.path.join(export_dir, case["name"])
        logits, keys, config, effect = peft_case(model_dir, case_dir, tokenizer, batch)
        with open(os.path.join(case_dir, "harambee_logits.json")) as f:
            ours = torch.tensor(json.load(f))
        diff = (logits - ours).abs().max().item()
        print(
            f"{case['name']}: {len(keys)} adapter tensors; PEFT vs Harambee logits max |diff| "
            f"{diff:.2e} (adapters move the logits by up to {effect:.3f})"
        )
        assert diff < 1e-4, f"{case['name']}: logits differ by {diff}"
        results.append(
            {
                **case,
                "adapter_keys": keys,
                "adapter_config": {
                    k: config[k] for k in ["peft_type", "r", "lora_alpha", "target_modules"]
                },
                "logits": rounded(logits.tolist()),
                "max_abs_diff_harambee": diff,
            }
        )
    fixture = {
        "generated_by": "models/text/reference.py peft",
        "model_sha256": sha256(os.path.join(model_dir, "model.safetensors")),
        "versions": versions(),
        "sentences": SENTENCES,
        "max_tokens": MAX_TOKENS,
        "cases": results,
    }
    write_json(out, fixture)
    print(f"wrote {out}")


if __name__ == "__main__":
    torch.manual_seed(0)
    command, args = sys.argv[1], sys.argv[2:]
    if command == "embeddings":
        embeddings(*args)
    elif command == "peft":
        peft(*args)
    else:
        sys.exit(f"unknown command {command!r}: embeddings or peft")
