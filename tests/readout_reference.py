"""An independent reference for candidate log-probabilities: one uncached, unpadded forward per
distinct input (the context + a candidate's leading ids; single-token candidates share one), none of
the backend's batching code. Only the positions that read a candidate's ids get logits: the rest of the
vocabulary projection would cost most of the time and change nothing."""
import torch

from tract_eval.protocol import exclusive_sequence_logprobs


def forward_candidate_logprobs(model, ids: list[int], candidates) -> dict[int, float]:
    totals, read = {}, {}
    with torch.inference_mode():
        for score, seq in zip(candidates.scores, candidates.sequences):
            inputs = tuple(ids + list(seq[:-1]))
            if inputs not in read:  # the last len(seq) positions read the candidate's ids
                logits = model(input_ids=torch.tensor([inputs], device=model.device), logits_to_keep=len(seq)).logits
                read[inputs] = torch.log_softmax(logits[0].float(), dim=-1)
            totals[score] = float(sum(read[inputs][i, token] for i, token in enumerate(seq)))
    return totals if candidates.single_token else exclusive_sequence_logprobs(totals, candidates)
