# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bench prompts and arrivals: companion-chat prompts (a character card, the user's turns, a new
message) and the send times of an open-loop run. Seeded: one seed, one run."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

# Tokens per English word for Llama-3 / SmolLM2-style BPE vocabularies on plain prose; the run
# corrects it from the servers' own usage counts during the warm-up (calibrate()).
TOKENS_PER_WORD = 1.3
WORDS = ("the a and to of I you it in that is was he she for on with as his her at be they this have "
         "from or one had by but not what all were we when your can said there use each which do how their "
         "if will up other about out many then them these so some would make like him into time has look two "
         "more go see no way could people my than first been call who its now find long down day did get come "
         "made may part over new sound take only little work know place year live me back give most very after "
         "thing our just name good sentence man think say great where help through much before line right too "
         "mean old any same tell boy follow came want show also around form three small set put end does another "
         "well large must big even such because turn here why ask went men read need land different home us move "
         "try kind hand picture again change off play spell air away animal house point page letter mother answer "
         "found study still learn should world high every near add food between own below country plant last "
         "school father keep tree never start city earth eye light thought head under story saw left few while "
         "along might close something seem next hard open example begin life always those both paper together got "
         "group often run important until children side feet car mile night walk white sea began grow took river "
         "four carry state once book hear stop without second later miss idea enough eat face watch far real almost "
         "let above girl sometimes mountain cut young talk soon list song being leave family smile laugh gentle "
         "quiet warm rain garden coffee evening morning remember dream heart voice window").split()
NAMES = ("Aria", "Brennan", "Cleo", "Dorian", "Elise", "Finn", "Greta", "Hugo", "Ines", "Jasper", "Kira", "Lio")
TRAITS = ("kind", "curious", "sarcastic", "shy", "brave", "playful", "wise", "stubborn", "gentle", "witty")


def _prose(rng: random.Random, words: int) -> str:
    out, sentence = [], []
    for _word in range(max(words, 1)):
        sentence.append(rng.choice(WORDS))
        if len(sentence) >= rng.randint(6, 14):
            out.append(" ".join(sentence).capitalize() + rng.choice((".", ".", ".", "!", "?")))
            sentence = []
    if sentence:
        out.append(" ".join(sentence).capitalize() + ".")
    return " ".join(out)


@dataclass
class PromptSource:
    """Companion-chat shaped prompts: a character card as the system prompt (shared by every user of
    that character: the prefix prompt caching reuses), the user's recent turns, and a new message.

    turns = 0: each of `users` users sends a fixed-length prompt whose history repeats word for word.
    turns > 0: `users` conversations run side by side; each lasts `turns` requests whose history
    grows by one exchange per turn (the user's message and a reply of reply_tokens), then that user
    starts a new conversation (new key, same character card). Turn 1 is the card and a first message.
    The conversations take their turns in a seeded random order (conversation_of), not in rotation.

    Deterministic for a seed. Lengths are in words, converted with tokens_per_word, which
    calibrate() corrects from what the servers counted.
    """
    prompt_tokens: int
    embed_tokens: int
    seed: int = 0
    users: int = 10
    characters: int = 4
    tokens_per_word: float = TOKENS_PER_WORD
    turns: int = 0
    reply_tokens: int = 64
    _cards: list[str] = field(default_factory=list)
    _turn: list[int] = field(default_factory=list)

    def __post_init__(self):
        rng = random.Random(self.seed)
        card_words = int(self.prompt_tokens * 0.4 / TOKENS_PER_WORD)  # fixed once: the cached prefix stays put
        self._cards = []
        for i in range(self.characters):
            name = NAMES[i % len(NAMES)]
            traits = ", ".join(rng.sample(TRAITS, 3))
            self._cards.append(f"You are {name}, a {traits} companion. Stay in character, reply warmly and in the "
                               f"first person. Persona: {_prose(rng, card_words // 2)} Scenario: {_prose(rng, card_words // 2)}")
        self._turn = [0] * self.users

    def chat(self, index: int) -> tuple[int, list[dict]]:
        """The messages of request number index: (user, messages)."""
        user, _conversation, messages = self.chat_turn(index)
        return user, messages

    def conversation_of(self, index: int) -> int:
        """The user (conversation) that request number index continues, with turns > 0.

        Rounds of `users` requests, each taking every conversation once in an order shuffled by the
        seed and the round's number: reproducible, a pure function of the index, every conversation
        advances at the same pace (at most 2 x users - 2 requests between two of its turns), and no
        conversation has a fixed place in the order. A strict rotation (user = index % users) would
        make a load-only pool that alternates between two idle servers send every conversation to
        the same server by accident whenever the number of conversations is even: affinity that real
        users, arriving in no fixed order, do not give it.
        """
        order = list(range(self.users))
        random.Random(f"{self.seed}-order-{index // self.users}").shuffle(order)
        return order[index % self.users]

    def chat_turn(self, index: int) -> tuple[int, str | None, list[dict]]:
        """Request number index: (user, conversation key or None without turns, messages)."""
        user = self.conversation_of(index) if self.turns > 0 else index % self.users
        self._turn[user] += 1
        if self.turns > 0:
            return self._conversation_turn(user, self._turn[user])
        rng = random.Random(f"{self.seed}-{user}-{self._turn[user]}")
        card = self._cards[user % self.characters]
        card_tokens = len(card.split()) * self.tokens_per_word
        history_words = max(int((self.prompt_tokens - card_tokens) / self.tokens_per_word) - 40, 0)
        messages = [{"role": "system", "content": card}]
        # the user's earlier turns: the same words for this user every time (seeded by user only), so
        # the conversation prefix repeats as it does in a real chat
        history_rng = random.Random(f"{self.seed}-{user}")
        remaining = history_words
        while remaining > 0:
            for role in ("user", "assistant"):
                words = min(remaining, history_rng.randint(20, 60)) if remaining > 0 else 0
                if words:
                    messages.append({"role": role, "content": _prose(history_rng, words)})
                remaining -= words
        if messages[-1]["role"] == "user":
            messages.append({"role": "assistant", "content": _prose(history_rng, 8)})
        messages.append({"role": "user", "content": _prose(rng, 30)})
        return user, None, messages

    def _conversation_turn(self, user: int, count: int) -> tuple[int, str, list[dict]]:
        number, turn = divmod(count - 1, self.turns)  # the user's conversation number, its turn (0-based)
        key = f"s{self.seed}-u{user}-c{number}"
        messages = [{"role": "system", "content": self._cards[user % self.characters]}]
        reply_words = max(int(self.reply_tokens / self.tokens_per_word), 1)
        for earlier in range(turn + 1):
            rng = random.Random(f"{key}-{earlier}")  # the same words for a turn every time it is repeated
            messages.append({"role": "user", "content": _prose(rng, 30)})
            if earlier < turn:  # what the companion answered then (a stand-in: the bench discards replies)
                messages.append({"role": "assistant", "content": _prose(rng, reply_words)})
        return user, key, messages

    def shared_prefix(self, user: int) -> tuple[int, int]:
        """The prefix a user's prompts share with every other user of its character: (the character,
        the words of its card)."""
        character = user % self.characters
        return character, len(self._cards[character].split())

    def embed(self, index: int) -> str:
        rng = random.Random(f"{self.seed}-embed-{index}")
        return _prose(rng, max(int(self.embed_tokens / self.tokens_per_word), 1))

    def calibrate(self, target_tokens: float, measured_tokens: float) -> None:
        """Scale future prompts so that what the server counts matches the target length."""
        if target_tokens > 0 and measured_tokens > 0:
            self.tokens_per_word *= measured_tokens / target_tokens


def arrival_times(rate_per_min: float, duration_s: float | None, count: int | None, arrivals: str, seed: int) -> list[float]:
    """Send times (seconds from the start) of an open-loop run: Poisson or evenly spaced.

    A short run of free Poisson draws often offers a rate far from the stated one (12/min for 60 s
    gives 6 to 19 requests in 95% of runs); the count is therefore fixed to the
    stated rate x duration, and the Poisson times are the ones a Poisson process has given that
    count: independent uniform times, sorted.
    """
    if rate_per_min <= 0:
        return []
    rate = rate_per_min / 60.0
    n = count if count is not None else max(int(round(rate * duration_s)), 1)
    span = duration_s if duration_s is not None else n / rate
    if arrivals == "constant":
        return [i / rate for i in range(n)]
    rng = random.Random(f"arrivals-{seed}-{float(rate_per_min)}")
    return sorted(rng.uniform(0.0, span) for _arrival in range(n))
