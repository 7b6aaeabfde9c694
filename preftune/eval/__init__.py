"""Evaluation of helpfulness and harms: judges and win rates, the reward–KL frontier, text metrics, safety and bias
suites, and the HTML report. One module per concern:

``stats`` (bootstrap intervals, win/tie/loss, length-controlled win rate), ``judges`` (reward, local LLM, HTTP, human),
``scoring`` (choices and answers by log-probs), ``frontier``, ``text_metrics`` (BLEU, ROUGE, BERTScore, perplexity),
``refusal`` (refusal classifier), ``safety`` (harmful requests, XSTest over-refusal), ``truthfulqa``, ``bbq``,
``pluralistic`` (Jensen–Shannon distance to human answer distributions), ``data`` (prompt sets and generations) and
``report`` (HTML + JSON).
"""
