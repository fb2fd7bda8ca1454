"""The same LoRA fine-tune as models/examples/minilm_bench.rs, in PyTorch + PEFT.

  bench.py MODEL_DIR DATA_JSON THREADS

DATA_JSON is what minilm_bench wrote (the same texts, labels and settings). LoRA rank 8,
alpha 16 on query and value, no dropout; a linear head on the mean-pooled last hidden states;
Adam; mini-batches padded to their longest text, truncated to max_tokens. Prints one JSON line
like minilm_bench's: seconds per epoch (the whole fit, model set-up excluded), samples per
second, peak RSS of the process, test accuracy and macro-F1.
"""

import json
import random
import resource
import sys
import time

import torch


def main(model_dir, data_json, threads):
    torch.set_num_threads(int(threads))
    torch.manual_seed(1)
    random.seed(1)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    with open(data_json) as f:
        data = json.load(f)
    n_classes = len(data["classes"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModel.from_pretrained(model_dir)
    model = get_peft_model(
        base,
        LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.0),
    )
    head = torch.nn.Linear(base.config.hidden_size, n_classes)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=data["learning_rate"])

    def logits(texts):
        batch = tokenizer(
            texts, padding=True, truncation=True, max_length=data["max_tokens"], return_tensors="pt"
        )
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))

    texts, labels = data["train"]["texts"], data["train"]["labels"]
    order = list(range(len(texts)))
    size = data["batch_size"]
    model.train()
    began = time.perf_counter()
    for _ in range(data["epochs"]):
        random.shuffle(order)
        total = 0.0
        for i in range(0, len(order), size):
            rows = order[i : i + size]
            loss = torch.nn.functional.cross_entropy(
                logits([texts[r] for r in rows]), torch.tensor([labels[r] for r in rows])
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
    seconds = time.perf_counter() - began

    model.eval()
    predicted = []
    with torch.no_grad():
        for i in range(0, len(data["test"]["texts"]), 32):
            predicted += logits(data["test"]["texts"][i : i + 32]).argmax(1).tolist()
    truth = data["test"]["labels"]
    accuracy = sum(p == t for p, t in zip(predicted, truth)) / len(truth)
    f1s = []
    for c in range(n_classes):
        tp = sum(p == c and t == c for p, t in zip(predicted, truth))
        fp = sum(p == c and t != c for p, t in zip(predicted, truth))
        fn = sum(p != c and t == c for p, t in zip(predicted, truth))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    print(
        json.dumps(
            {
                "impl": "pytorch+peft",
                "threads": int(threads),
                "train_texts": len(texts),
                "epochs": data["epochs"],
                "seconds_per_epoch": seconds / data["epochs"],
                "samples_per_s": len(texts) * data["epochs"] / seconds,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "final_train_loss": total / len(texts),
                "test_accuracy": accuracy,
                "test_macro_f1": sum(f1s) / len(f1s),
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
