"""The speech benchmark's evaluation text.

``HARVARD`` is lists 1 and 2 of the Harvard sentences (IEEE Recommended Practice for
Speech Quality Measurements, 1969; public domain). ``TWELVE_WORDS`` are sentences of
exactly twelve words written for this benchmark, for the TTS first-audio figure.
"""

HARVARD = (
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
)

TWELVE_WORDS = (
    "The morning train was late again so we walked to the office.",
    "Please remember to water the plants on the balcony before you leave.",
    "Our team finished the report early and went out for a long lunch.",
    "The old lighthouse keeper climbed the stairs every night to light the lamp.",
    "She packed two warm sweaters because the mountain air gets cold quickly.",
    "A small dog barked at the mail carrier until the gate was closed.",
    "We watched the storm roll across the valley from the covered porch.",
    "The bakery on the corner sells fresh bread before the sun comes up.",
    "He fixed the broken bicycle chain with a pair of pliers and patience.",
    "The museum opens late on Fridays so visitors can come after work.",
)


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Word-level edit distance (substitutions + deletions + insertions)."""
    row = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hypothesis, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]
