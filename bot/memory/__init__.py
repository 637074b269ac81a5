"""Conversation memory: the Redis store of turns and summaries, and compaction."""

from bot.memory.compaction import Compactor, TokenEstimator
from bot.memory.store import ConversationState, RedisMemory, Summary, conversation_key

__all__ = [
    "Compactor",
    "ConversationState",
    "RedisMemory",
    "Summary",
    "TokenEstimator",
    "conversation_key",
]
