"""Built-in objectives, one module each: classification, consistency (UDA, rides along with classification), mlm,
nsp / sop, clm, instruction."""

from tessera import hookimpl
from tessera.plugins.objectives.causal_lm import CausalLM, Instruction
from tessera.plugins.objectives.classification import Classification
from tessera.plugins.objectives.consistency import Consistency
from tessera.plugins.objectives.masked_lm import MaskedLM
from tessera.plugins.objectives.sentence_pairs import NextSentence, SentenceOrder


@hookimpl
def tessera_objectives():
    return [Classification, Consistency, MaskedLM, NextSentence, SentenceOrder, CausalLM, Instruction]
