"""The synthetic chat corpus the demo model learns from.

Every answer is built from one task's facts and four independent style axes:

    tone      formal | casual
    length    short  | long        (long adds a detail sentence)
    name      uses the person's name or not
    question  ends with a follow-up question or not

A system message may ask for a style ("Style: formal, short, name, question."); without one
the style is drawn at random, so the base model answers each way about half the time. That
spread is what makes many different user preferences learnable by adapters later.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = [
    "Alice", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas",
    "Kira", "Liam", "Maya", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara",
    "Umar", "Vera", "Will", "Yara", "Zoe", "Aaron", "Bella", "Chen", "Dina", "Emil",
]

# (request, formal answer, casual answer, formal detail, casual detail)
TASKS = [
    ("book a table for dinner", "I will reserve a table for you at seven this evening.",
     "I'll grab you a table for seven tonight.",
     "The restaurant has confirmed a quiet corner by the window.",
     "They even saved you a spot by the window."),
    ("reset my password", "I have sent a password reset link to your email address.",
     "I just sent a reset link to your email.",
     "The link remains valid for the next thirty minutes.",
     "It works for about half an hour, so be quick."),
    ("track my order", "Your order has left the warehouse and will arrive on Friday.",
     "Your order's on the way and lands Friday.",
     "You may follow each step with the tracking number in your account.",
     "You can watch it move with the tracking number in your account."),
    ("plan a weekend trip", "I suggest two days in the mountains with a guided hike.",
     "How about two days in the mountains with a fun hike?",
     "The lodge near the lake offers rooms at a fair price.",
     "There's a cozy lodge by the lake that won't break the bank."),
    ("recommend a book", "I recommend a classic mystery novel with a clever detective.",
     "Grab a good mystery novel with a sharp detective.",
     "It is short enough to finish over a single weekend.",
     "You'll blow through it in one weekend."),
    ("fix my bike", "The chain needs oil and the brakes should be tightened.",
     "Oil the chain and tighten the brakes, that should do it.",
     "A local shop can complete the repair within one day.",
     "Any bike shop can sort it out in a day."),
    ("cancel my subscription", "I have cancelled your subscription as of today.",
     "Done, your subscription is cancelled.",
     "You will keep access until the end of the current month.",
     "You still get to use it till the month ends."),
    ("find a recipe for soup", "I suggest a simple tomato soup with fresh basil.",
     "Try a quick tomato soup with some fresh basil.",
     "It takes about twenty minutes and needs only five ingredients.",
     "It's ready in twenty minutes with just five things."),
    ("learn to play guitar", "I recommend starting with three basic chords each day.",
     "Start with three easy chords every day.",
     "Fifteen minutes of daily practice will build steady progress.",
     "Fifteen minutes a day and you'll get there fast."),
    ("write a thank you note", "I have drafted a warm note thanking your host for the evening.",
     "I wrote a sweet note thanking your host for the night.",
     "You may add a personal line about the meal before sending it.",
     "Toss in a line about the food before you send it."),
    ("pick a gift for my sister", "I suggest a scented candle and a handwritten card.",
     "Go for a nice candle and a handwritten card.",
     "Both can be delivered to her door by tomorrow.",
     "Both can show up at her door tomorrow."),
    ("improve my sleep", "I advise going to bed at the same time every night.",
     "Try hitting the hay at the same time every night.",
     "Avoiding screens for an hour before bed also helps considerably.",
     "Ditching your phone an hour before bed helps a ton."),
    ("move my meeting", "I have moved your meeting to Thursday at ten.",
     "Your meeting's now Thursday at ten.",
     "All attendees have received the updated invitation.",
     "Everyone already got the new invite."),
    ("choose a laptop", "I recommend a light laptop with a long battery life.",
     "Get a light laptop with a battery that lasts all day.",
     "A model with sixteen gigabytes of memory will serve you well.",
     "Sixteen gigs of memory should keep you happy."),
    ("start running", "I suggest beginning with three short runs each week.",
     "Kick off with three short runs a week.",
     "Alternate one minute of running with one minute of walking.",
     "Mix a minute of jogging with a minute of walking."),
    ("pay my bill", "I have paid your electricity bill from your main account.",
     "Paid your power bill from your main account.",
     "The receipt has been saved to your documents folder.",
     "The receipt's in your documents folder."),
    ("water my plants", "I recommend watering your plants twice a week in the morning.",
     "Water your plants twice a week in the morning.",
     "Check that the soil is dry before adding more water.",
     "Poke the soil first and only water if it's dry."),
    ("learn some Spanish", "I suggest ten new words each day with a short review.",
     "Learn ten new words a day and review them quickly.",
     "Listening to Spanish songs will also train your ear.",
     "Spanish songs are a fun way to train your ear too."),
    ("clean my kitchen", "I suggest clearing the counters first and then the sink.",
     "Clear the counters first, then hit the sink.",
     "A mix of vinegar and water removes most stains.",
     "Vinegar and water gets rid of most stains."),
    ("save some money", "I advise setting aside ten percent of each paycheck.",
     "Stash ten percent of every paycheck.",
     "An automatic transfer on payday makes this effortless.",
     "Set up an auto transfer on payday and forget about it."),
    ("call a taxi", "I have ordered a taxi that will arrive in five minutes.",
     "Your taxi's coming in five minutes.",
     "The driver will wait outside the main entrance.",
     "The driver will be right out front."),
    ("renew my passport", "I have filled in the renewal form for your passport.",
     "I filled out your passport renewal form.",
     "Please bring two recent photos to the office on Monday.",
     "Just bring two new photos to the office Monday."),
    ("bake a cake", "I suggest a simple vanilla sponge with fresh berries.",
     "Go with an easy vanilla cake and some berries.",
     "Bake it for thirty minutes at one hundred eighty degrees.",
     "Pop it in the oven for thirty minutes at one eighty."),
    ("find a plumber", "I have booked a plumber for tomorrow morning at nine.",
     "Got a plumber coming tomorrow at nine.",
     "The visit includes a free inspection of your pipes.",
     "They'll check your pipes for free too."),
]

REQUEST_TEMPLATES = [
    "Hi, I'm {name}. Can you help me {task}?",
    "Hello, my name is {name}. I need to {task}.",
    "{name} here. Could you help me {task}?",
    "This is {name}. Please help me {task}.",
]

FORMAL_OPENERS = ["Certainly", "Of course", "With pleasure"]
CASUAL_OPENERS = ["Sure thing", "No problem", "You got it"]
FORMAL_QUESTIONS = ["Is there anything else I may assist you with?",
                    "May I help you with anything further?"]
CASUAL_QUESTIONS = ["Anything else you need?", "Want help with anything else?"]


@dataclass(frozen=True)
class Style:
    formal: bool
    long: bool
    name: bool
    question: bool

    def describe(self) -> str:
        """The system-message wording that asks for this style."""
        return "Style: " + ", ".join([
            "formal" if self.formal else "casual",
            "long" if self.long else "short",
            "name" if self.name else "no name",
            "question" if self.question else "no question",
        ]) + "."

    @staticmethod
    def random(rng: random.Random) -> Style:
        return Style(*(rng.random() < 0.5 for _ in range(4)))


def make_prompt(task_index: int, name: str, rng: random.Random) -> str:
    template = rng.choice(REQUEST_TEMPLATES)
    return template.format(name=name, task=TASKS[task_index][0])


def make_answer(task_index: int, name: str, style: Style, rng: random.Random) -> str:
    _, formal, casual, formal_detail, casual_detail = TASKS[task_index]
    opener = rng.choice(FORMAL_OPENERS if style.formal else CASUAL_OPENERS)
    parts = [f"{opener}, {name}." if style.name else f"{opener}."]
    parts.append(formal if style.formal else casual)
    if style.long:
        parts.append(formal_detail if style.formal else casual_detail)
    if style.question:
        parts.append(rng.choice(FORMAL_QUESTIONS if style.formal else CASUAL_QUESTIONS))
    return " ".join(parts)


def make_conversations(n: int, seed: int, styled_share: float = 0.5) -> list[list[dict]]:
    """`n` conversations in the OpenAI `messages` format, reproducible from `seed`.

    A `styled_share` of them carry a system message naming the style the answer follows.
    """
    rng = random.Random(seed)
    conversations = []
    for _ in range(n):
        task = rng.randrange(len(TASKS))
        name = rng.choice(NAMES)
        style = Style.random(rng)
        messages = []
        if rng.random() < styled_share:
            messages.append({"role": "system", "content": style.describe()})
        messages.append({"role": "user", "content": make_prompt(task, name, rng)})
        messages.append({"role": "assistant", "content": make_answer(task, name, style, rng)})
        conversations.append(messages)
    return conversations


def style_of(answer: str, name: str) -> Style | None:
    """Reads the four style axes back off an answer; None if the answer is not well formed.

    Used to judge what the demo model (or an adapter) actually says.
    """
    formal_hit = any(answer.startswith(o) for o in FORMAL_OPENERS)
    casual_hit = any(answer.startswith(o) for o in CASUAL_OPENERS)
    if formal_hit == casual_hit:
        return None
    formal = formal_hit
    task = next((t for t in TASKS if (t[1] if formal else t[2]) in answer), None)
    if task is None:
        return None
    detail = task[3] if formal else task[4]
    questions = FORMAL_QUESTIONS if formal else CASUAL_QUESTIONS
    return Style(
        formal=formal,
        long=detail in answer,
        name=answer.split(".")[0].endswith(f", {name}"),
        question=any(answer.endswith(q) for q in questions),
    )
