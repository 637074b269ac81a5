"""RedisMemory against a real Redis."""

from __future__ import annotations

import redis.asyncio as aioredis

from bot.memory import RedisMemory, conversation_key
from bot.messages import Turn


def turn(n: int, role: str = "user") -> Turn:
    return Turn(role=role, text=f"message {n}", ts=float(n))  # type: ignore[arg-type]


async def test_turns_come_back_in_order(redis_client: aioredis.Redis) -> None:
    """Appended turns load oldest first, with their roles and text intact."""
    memory = RedisMemory(redis_client)
    await memory.append("whatsapp:+15550001", [turn(1), turn(2, "assistant")])
    await memory.append("whatsapp:+15550001", [turn(3)])
    assert await memory.load("whatsapp:+15550001") == [turn(1), turn(2, "assistant"), turn(3)]


async def test_conversations_are_separate(redis_client: aioredis.Redis) -> None:
    """One conversation's turns never show up in another's."""
    memory = RedisMemory(redis_client)
    await memory.append("telegram:1", [turn(1)])
    assert await memory.load("telegram:2") == []


async def test_clear_forgets_the_conversation(redis_client: aioredis.Redis) -> None:
    """clear() leaves an empty history."""
    memory = RedisMemory(redis_client)
    await memory.append("console:me", [turn(1)])
    await memory.clear("console:me")
    assert await memory.load("console:me") == []


async def test_keys_carry_the_conversation_hash_tag(redis_client: aioredis.Redis) -> None:
    """Every key of a conversation has `{conversation}` as its cluster hash tag and an expiry."""
    memory = RedisMemory(redis_client, idle_days=1)
    await memory.append("whatsapp:+15550001", [turn(1)])
    keys = await redis_client.keys("*")
    assert keys == [conversation_key("whatsapp:+15550001", "turns")]  # summary/base come later
    assert "{whatsapp:+15550001}" in keys[0]
    assert 0 < await redis_client.ttl(keys[0]) <= 86400


async def test_riders_are_read_with_the_state_and_expire_with_it(
    redis_client: aioredis.Redis,
) -> None:
    """Other keys of the conversation read in the state's script call come back in order; one
    that exists is given the ttl, one that does not stays absent."""
    memory = RedisMemory(redis_client)
    conversation = "whatsapp:+15550002"
    await memory.append(conversation, [turn(1)])
    present, absent = conversation_key(conversation, "x"), conversation_key(conversation, "y")
    await redis_client.set(present, "kept", ex=100)
    read = memory.read_state_with(conversation, [present, absent], 5000)
    async with redis_client.pipeline(transaction=False) as pipe:
        read.queue(pipe)
        state, found = read.decode(await pipe.execute())
    assert state.turns == [turn(1)]
    assert found == ["kept", None]
    assert 4990 <= await redis_client.ttl(present) <= 5000
    assert await redis_client.exists(absent) == 0
