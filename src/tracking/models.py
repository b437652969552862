"""A run's logged models: named after the run, described (its run, its weights, their epoch), found by their role."""

import re
from typing import Optional

from src.core.errors import TrackingError

ROLE_TAG = "logged_as"  # on a logged model: which of a run's models it is (FINAL or BEST), whatever its name
FINAL, BEST = "model", "best_model"  # the roles, as `src.evaluate --model` names them (and older runs' model names)
NOTE_TAG = "mlflow.note.content"  # a logged model's "Description" in the UI, as a run's (the UI's own tag key)
BAD_NAME_CHARACTERS = "/:.%\"'"  # MLflow refuses a logged model's name holding any of them


def model_name(run_name: str, role: str) -> str:
    """The logged model's name: the run's (`fit-l2-large`, `fit-l2-large-best`), so the experiment's Models tab
    tells its models apart; characters MLflow refuses in a model's name become `-`."""
    name = re.sub(f"[{re.escape(BAD_NAME_CHARACTERS)}]", "-", run_name) + ("-best" if role == BEST else "")
    return name or role


def model_note(run_name: str, run_id: str, experiment_id: str, role: str, weights: str) -> str:
    """The logged model's description: its run (a link) and `weights`, which weights it holds (their epoch)."""
    link = f"[{run_name}](#/experiments/{experiment_id}/runs/{run_id})"
    kind = "best model" if role == BEST else "final model"
    return (f"The {kind} of run {link}: {weights} (epochs count from 0, as the metrics' steps). Loads as "
            f"`runs:/{run_id}/{model_name(run_name, role)}`; scored by "
            f"`python -m src.evaluate {run_id} --model {role}`.")


def every_page(search, experiment_id: str, **options) -> list:
    """What `search([experiment_id], ...)` finds (runs, logged models), through as many pages as there are."""
    found, token = [], None
    while True:
        page = search([experiment_id], page_token=token, **options)
        found.extend(page)
        token = page.token
        if not token:
            return found


def run_models(client, run_id: str) -> list:
    """Every logged model of the run, oldest first."""
    experiment_id = client.get_run(run_id).info.experiment_id
    found = every_page(client.search_logged_models, experiment_id, filter_string=f"source_run_id = '{run_id}'")
    return sorted((m for m in found if m.source_run_id == run_id), key=lambda m: m.creation_timestamp)


def logged_model_uri(client, run_id: str, role: str) -> Optional[str]:
    """`models:/<ID>` of the run's logged model of `role` (a run logged before models were named after their run:
    the model of that name), or None when the run has none."""
    found = run_models(client, run_id)
    for pick in (lambda m: m.tags.get(ROLE_TAG) == role, lambda m: ROLE_TAG not in m.tags and m.name == role):
        matches = [m for m in found if pick(m)]
        if matches:  # a resumed run that logged again: its newest
            return f"models:/{matches[-1].model_id}"
    return None


def retitle_models(client, run_id: str, old_name: str, new_name: str) -> None:
    """A run renamed after its models were logged (a reproduction, a pruned trial): their descriptions link it by
    its new name (a logged model's own name cannot change)."""
    for model in run_models(client, run_id):
        note = model.tags.get(NOTE_TAG, "")
        if f"[{old_name}](" in note:
            retitled = note.replace(f"[{old_name}](", f"[{new_name}](", 1)
            client.set_logged_model_tags(model.model_id, {NOTE_TAG: retitled})


def require_logged_model(client, run_id: str, role: str) -> str:
    """The URI of the run's model of `role`; a one-line TrackingError when it has none."""
    uri = logged_model_uri(client, run_id, role)
    if uri is None:
        raise TrackingError(f"run {run_id}: no logged model {role!r} ({FINAL} or {BEST}); runs log them unless "
                            "mlflow.log_models=false")
    return uri
