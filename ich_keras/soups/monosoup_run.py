"""What `python -m ich_keras.soup monosoup` does: MonoSoup of one fine-tuned model against W0, published as a method.

Outputs, under RUN_DIR/soups/monosoup_<rule>/ (DIR/monosoup_<rule>/ with --output DIR):
    soup.weights.h5     the soup
    layers.json         per-layer k, P_k, rho, lambdas
    provenance.json     W1 and W0 with their sha256 (W0's resizing to the run's image size, if any), the folder
                        their paths are relative to, and that folder from the soups folder (ROOT_FROM_SOUPS)
    results.json        the method, its parameters; with a run to score on, W1's and the soup's val and test metrics
    results.md          W1 against the soup (Table IV), when scored
"""

from __future__ import annotations

from pathlib import Path

from ich_keras import atomic
from ich_keras.errors import UserError
from ich_keras.soups import merges, provenance, publish, report
from ich_keras.soups.monosoup import monosoup
from ich_keras.soups.methods import ingredient_results
from ich_keras.weight_files import save


def run_monosoup(pretrained, finetuned, rule: str, R: float, output_dir: Path, run=None, batch_size: int = 32,
                 progress: bool = True, score: bool = True) -> dict:
    """MonoSoup of `finetuned` against `pretrained` into `output_dir`; with a run, W0 resized to its image size (as
    fit resized its model.init) and, where `score`, W1 and the soup scored on its data. Published as `cook`
    publishes a method: under the lock of the folder above, staged, renamed into place."""
    output_dir = Path(output_dir).resolve()
    soups_dir, method = output_dir.parent, output_dir.name
    if not method:
        raise UserError(f"The MonoSoup output must be a folder to create or replace, not /. "
                        f"Received: output={str(output_dir)!r}")
    with publish.locked(soups_dir):
        publish.remove_leftovers(soups_dir, [method])
        publish.check_replaceable(output_dir)  # before minutes of decomposing and scoring
        publish.check_inputs_kept(output_dir, [finetuned, pretrained])
        with publish.staged(soups_dir, method) as directory:
            results = _monosoup(pretrained, finetuned, rule, R, directory, soups_dir, run, batch_size, progress,
                                score)
    return results


def _monosoup(pretrained, finetuned, rule, R, directory: Path, soups_dir: Path, run, batch_size: int,
              progress: bool, score: bool) -> dict:
    """`run_monosoup`'s outputs, written into `directory` (staged: it becomes soups_dir/<method>)."""
    model = run.build_model(finetuned) if run is not None else None
    # With a run W0 is resized to its image size, as fit resized its model.init; without one it is used as it is.
    w0, resized = merges.pretrained_weights(pretrained, model) if model is not None else (pretrained, [])
    weights, layers = monosoup(w0, finetuned, rule=rule, R=R)
    save(weights, directory / "soup.weights.h5", template=finetuned)
    atomic.write_json(directory / "layers.json", layers)
    results = {"method": "monosoup", "label": f"MonoSoup ({rule})", "pretrained": str(pretrained),
               "finetuned": str(finetuned), "rule": rule, "R": layers["R"]}
    root = run.path if run is not None else soups_dir  # provenance's paths are relative to it
    results["provenance"] = provenance.provenance("monosoup", {"rule": rule, "R": layers["R"]}, [Path(finetuned).name],
                                                  [finetuned], root, pretrained, resized=resized)
    # "root" is absolute and goes stale when the run moves, and a MonoSoup lists no "run_dir" as cooked soups do:
    # `analyze` finds the root from the soups folder it reads ("..": the run; ".": the soups folder itself).
    results["provenance"][provenance.ROOT_FROM_SOUPS] = provenance.relative(root, soups_dir)
    atomic.write_json(directory / "provenance.json", results["provenance"])
    if run is not None and score:
        names = list(run.class_names)
        datasets = {"val": run.dataset("val", batch_size), "test": run.dataset("test", batch_size)}
        finetuned_results, _, evaluator = ingredient_results(model, [finetuned], datasets, names, progress)
        results.update(finetuned_model=finetuned_results[0],
                       **{split: evaluator.evaluate(weights, data) for split, data in datasets.items()})
        rows = [{"method": f"Fine-tuned ({Path(finetuned).name})", "ingredients": 1, "forward_passes": 1,
                 "test": finetuned_results[0]["test"]},
                {"method": results["label"], "ingredients": 1, "forward_passes": 1, "test": results["test"]}]
        atomic.write_text(directory / "results.md", f"# {results['label']}\n\n"
                          f"{provenance.summary(results['provenance'])}\n\n"
                          + report.table_iv(rows, finetuned_results[0]["test"]) + "\n")
    atomic.write_json(directory / "results.json", results)
    return results

