"""An independent reference for candidate log-probabilities: one uncached, unpadded forward per
candidate over the context + the candidate's leading ids (none of the backend's batching code)."""
import torch

from tract_eval.protocol import exclusive_sequence_logprobs


def forward_candidate_logprobs(model, ids: list[int], candidates) -> dict[int, float]:
    totals = {}
    with torch.inference_mode():
        for score, seq in zip(candidates.scores, candidates.sequences):
            inputs = torch.tensor([ids + list(seq[:-1])], device=model.device)
            logprobs = torch.log_softmax(model(input_ids=inputs).logits[0].float(), dim=-1)
            totals[score] = float(sum(logprobs[len(ids) - 1 + i, token] for i, token in enumerate(seq)))
    return totals if candidates.single_token else exclusive_sequence_logprobs(totals, candidates)
