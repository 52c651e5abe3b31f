"""Where each task's training moved the adapter, and how much of it later tasks undid (issue 7: why
does SSLoRA forget what it forgets?).

For one continual run (`runs/continual/<method>/seed<k>`), the adapter saved after each task gives the
weight update of every expert j in every adapted layer, Delta W_j = s (B_j A_j - B_j' A_j') against the
previous task's adapter (the first task: against the initial adapter, rebuilt from the run's start model
with the saved config, and checked against the saved frozen residual). Reported, summed over layers:

* energy share: ||Delta W_j||_F^2 of task t over all experts' (do tasks write to different experts?);
* undone: for each task t and each later task u, -<Delta_u, Delta_t> / ||Delta_t||^2 over the whole
  adapter (the share of task t's update that task u moved back; 0 = orthogonal, 1 = erased), and per
  expert for routed methods;
* cosine between task updates per expert.

    python benchmarks/continual/updates.py runs/continual/sslora/seed0 runs/continual/lora/seed0
    # -> benchmarks/results/continual_updates/<method>_seed<k>.json and .png

The full (m, n) products are formed per expert and layer in fp64, so this runs in about a minute per run
on MedQwen-mini.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "benchmarks" / "results" / "continual_updates"


def task_adapters(run: Path) -> list[tuple[str, Path]]:
    """(task name, adapter folder) after each finished task, in sequence order."""
    stages = sorted((run / "train").glob("task*"), key=lambda p: int(p.name[4:].split("_")[0]))
    found = [(p.name.split("_", 1)[1], p / "final" / "adapter") for p in stages]
    missing = [str(folder) for _, folder in found if not (folder / "adapter_model.safetensors").exists()]
    if missing or not found:
        raise FileNotFoundError(f"{run}: no finished task adapters ({', '.join(missing) or 'train/task*/final/adapter'})")
    return found


def initial_adapter(run: Path, folder: Path, first: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter before the first task: rebuilt from the run's start model and saved config. Zero
    init (LoRA, MoELoRA) needs no rebuild: B = 0, so every expert's product is 0 (returned as {})."""
    from sslora import SSLoRAConfig, get_sslora_model

    config, _ = SSLoRAConfig.load(folder)
    if config.init == "zero":
        return {}
    from medqwen.models import load_model

    start = Path(json.loads((run / "run.json").read_text())["model"])
    model = get_sslora_model(load_model(str(start / "model" if (start / "model").is_dir() else start)), config)
    state = model._adapter_tensors()  # the names save_pretrained writes
    tensors = {}
    for name, saved in first.items():
        if name.endswith(("res_A", "res_B")):  # to 1e-5 of its largest entry: the SVD runs in another process
            rebuilt = state.get(name)
            if rebuilt is None or not torch.allclose(rebuilt, saved, rtol=0, atol=1e-5 * float(saved.abs().max())):
                raise RuntimeError(f"rebuilt initial adapter differs from the run's frozen {name}: not the same start")
        if name.endswith(("lora_A", "lora_B")):
            tensors[name] = state[name].detach().clone()
    return tensors


def expert_product(tensors: dict[str, torch.Tensor], layer: str, config: dict) -> torch.Tensor | None:
    """(N, m, n) fp64: s * B_j A_j per expert of one layer (None: not in `tensors`, i.e. zero init)."""
    a, b = tensors.get(f"{layer}.experts.lora_A"), tensors.get(f"{layer}.experts.lora_B")
    if a is None:
        return None
    n_exp = config["num_experts"]
    d = config["r"] // n_exp
    a, b = a.double().view(n_exp, d, -1), b.double().view(b.shape[0], n_exp, d)
    return config["layers"][layer]["scaling"] * torch.einsum("mjd,jdn->jmn", b, a)


def analyse(run: Path) -> dict:
    adapters = task_adapters(run)
    config = json.loads((adapters[0][1] / "adapter_config.json").read_text())
    states = [load_file(str(folder / "adapter_model.safetensors")) for _, folder in adapters]
    start = initial_adapter(run, adapters[0][1], states[0])
    names, n_exp, tasks = [name for name, _ in adapters], config["num_experts"], len(states)
    # per layer, one layer at a time (all layers' products at once would take ~20 GB in fp64):
    # energy[t] = sum over layers of ||Delta_t||^2 per expert, dot[t][u] = <Delta_u, Delta_t> per expert
    dot = torch.zeros(tasks, tasks, n_exp, dtype=torch.float64)
    for layer in config["layers"]:
        previous = expert_product(start, layer, config)
        deltas = []
        for state in states:
            current = expert_product(state, layer, config)
            deltas.append(current - previous if previous is not None else current)
            previous = current
        for t in range(tasks):
            for u in range(t, tasks):
                dot[t, u] += (deltas[u] * deltas[t]).sum(dim=(1, 2))
    energy = torch.stack([dot[t, t] for t in range(tasks)])
    result = {
        "run": str(run), "init": config.get("init"), "tasks": names, "num_experts": n_exp,
        "update_norm": [float(e.sum().sqrt()) for e in energy],
        "energy_share": [[float(x) for x in e / e.sum()] for e in energy],
        "undone": {}, "undone_per_expert": {}, "cosine_per_expert": {},
    }
    for t in range(tasks):
        for u in range(t + 1, tasks):
            key = f"{names[u]} on {names[t]}"
            result["undone"][key] = float(-dot[t, u].sum() / energy[t].sum())
            result["undone_per_expert"][key] = [float(x) for x in -dot[t, u] / energy[t]]
            result["cosine_per_expert"][key] = [float(x) for x in dot[t, u] / (energy[t] * energy[u]).sqrt()]
    result["undone_first_task_by_all_later"] = float(-dot[0, 1:].sum() / energy[0].sum())
    return result


def plot(result: dict, path: Path) -> None:
    from medqwen.continual.io import pyplot

    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    shares = torch.tensor(result["energy_share"])
    n_exp = shares.shape[1]
    width = 0.8 / len(result["tasks"])
    for i, task in enumerate(result["tasks"]):
        axes[0].bar([j + i * width for j in range(n_exp)], shares[i].tolist(), width, label=task)
    axes[0].set(xlabel="expert (spectral segment)" if n_exp > 1 else "adapter", ylabel="share of the task's update energy",
                title="where each task wrote", xticks=[j + 0.4 - width / 2 for j in range(n_exp)], xticklabels=range(n_exp))
    axes[0].legend(fontsize=8)
    keys = list(result["undone"])
    axes[1].barh(keys, [result["undone"][k] for k in keys])
    axes[1].axvline(0, color="k", lw=0.5)
    axes[1].set(xlabel="share of the earlier task's update moved back", title="later task on earlier task")
    fig.suptitle(Path(result["run"]).parent.name + " " + Path(result["run"]).name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="continual run folders (runs/continual/<method>/seed<k>)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for run in args.runs:
        result = analyse(run)
        stem = f"{run.parent.name}_{run.name}"
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2))
        plot(result, args.out / f"{stem}.png")
        print(f"{stem}: update norms {[round(x, 3) for x in result['update_norm']]}; undone "
              + ", ".join(f"{k} {v:.3f}" for k, v in result["undone"].items())
              + f"; first task undone by all later {result['undone_first_task_by_all_later']:.3f}")
        for task, share in zip(result["tasks"], result["energy_share"]):
            print(f"  {task}: energy share per expert {[round(x, 3) for x in share]}")


if __name__ == "__main__":
    main()
