"""A labelled question → passage evaluation set over the sample corpus.

Each question is worded differently from the passage that answers it (paraphrases, no copied
phrases where we could avoid them); the label is the corpus file and the section heading of that
passage.
"""

from __future__ import annotations

EVAL: tuple[tuple[str, str, str], ...] = (
    # (question, corpus file, section)
    (
        "Which four scriptures make up the oldest sacred collection of hymns?",
        "vedic-concepts.md",
        "The Four Vedas",
    ),
    ("Which Veda sets the verses to melodies for singing?", "vedic-concepts.md", "The Four Vedas"),
    ("What does righteous conduct suited to one's stage of life mean?", "vedic-concepts.md", "Dharma"),
    ("Does every deed we do shape what happens to us later?", "vedic-concepts.md", "Karma"),
    ("Is the individual soul the same as the ultimate reality?", "vedic-concepts.md", "Atman and Brahman"),
    ("What is the meaning of tat tvam asi?", "vedic-concepts.md", "Atman and Brahman"),
    (
        "What was the old word for the natural regularity of seasons and sunrise?",
        "vedic-concepts.md",
        "Rta, the Cosmic Order",
    ),
    ("How can someone be released from the cycle of rebirth?", "vedic-concepts.md", "Moksha"),
    (
        "What does the Gita say about acting without attachment to results?",
        "gita-on-action.md",
        "Acting Without Attachment to Results",
    ),
    (
        "Should I care about the outcome of my work or only about the effort?",
        "gita-on-action.md",
        "Acting Without Attachment to Results",
    ),
    (
        "Why did Arjuna put down his weapon at Kurukshetra?",
        "gita-on-action.md",
        "The Setting of the Dialogue",
    ),
    ("Who was the charioteer who counselled the prince?", "gita-on-action.md", "The Setting of the Dialogue"),
    (
        "What is the yoga of unselfish service and duty?",
        "gita-on-action.md",
        "Karma Yoga, the Path of Selfless Work",
    ),
    (
        "Is it better to follow your own calling badly or someone else's perfectly?",
        "gita-on-action.md",
        "Svadharma, One's Own Duty",
    ),
    (
        "How should a wise person respond to both praise and blame?",
        "gita-on-action.md",
        "Equanimity in Success and Failure",
    ),
    ("What are sattva, rajas and tamas?", "gita-on-action.md", "The Three Gunas and Action"),
    ("What is the traditional Indian medical system about?", "ayurveda-doshas.md", "What Ayurveda Is"),
    ("Which dosha controls movement and is dry and cold?", "ayurveda-doshas.md", "Vata Dosha"),
    (
        "I feel anxious, sleep badly and have dry skin; which dosha is imbalanced?",
        "ayurveda-doshas.md",
        "Vata Dosha",
    ),
    (
        "What calms heartburn and irritability caused by too much internal heat?",
        "ayurveda-doshas.md",
        "Pitta Dosha",
    ),
    (
        "Which dosha is linked to lethargy, congestion and putting on weight?",
        "ayurveda-doshas.md",
        "Kapha Dosha",
    ),
    (
        "What is the constitution a person is born with called?",
        "ayurveda-doshas.md",
        "Prakriti, Your Constitution",
    ),
    (
        "What daily schedule does Ayurveda recommend from waking to bedtime?",
        "ayurveda-doshas.md",
        "Dinacharya, the Daily Routine",
    ),
    ("What are the eight steps of Patanjali's system?", "yoga-basics.md", "The Eight Limbs of Yoga"),
    (
        "What ethical rules like non-violence and truthfulness does yoga teach?",
        "yoga-basics.md",
        "Yamas and Niyamas",
    ),
    ("Which poses should a novice try first?", "yoga-basics.md", "Asana, Postures for Beginners"),
    ("How do I do alternate nostril breathing?", "yoga-basics.md", "Pranayama, Working With the Breath"),
    ("How long should a beginner sit in meditation each day?", "yoga-basics.md", "Meditation"),
    (
        "Why is reviewing at increasing intervals better than cramming?",
        "study-skills.md",
        "Spaced Repetition",
    ),
    ("Is testing myself better than rereading my notes?", "study-skills.md", "Active Recall"),
    ("What is the twenty-five minute timer method for focus?", "study-skills.md", "The Pomodoro Technique"),
    ("How does the Cornell note-taking layout work?", "study-skills.md", "Taking Good Notes"),
    ("Should I stay up all night before an exam?", "study-skills.md", "Sleep and Learning"),
    ("Should I mix different problem types when I practise maths?", "study-skills.md", "Interleaving Topics"),
    ("How many days do I have to get my money back for a purchase?", "platform-policies.md", "Refund Policy"),
    ("Can I be reimbursed for a digital product?", "platform-policies.md", "Refund Policy"),
    ("How do I swap an item for a different size?", "platform-policies.md", "Returns and Exchanges"),
    (
        "How much does express delivery cost and how fast is it?",
        "platform-policies.md",
        "Shipping Times and Costs",
    ),
    ("Is delivery free, and above what order value?", "platform-policies.md", "Shipping Times and Costs"),
    ("Where can I find the tracking number of my parcel?", "platform-policies.md", "Tracking an Order"),
    (
        "When is customer support open, and is it open on Sunday?",
        "platform-policies.md",
        "Support Hours and Channels",
    ),
    ("My box arrived broken, what should I do?", "platform-policies.md", "Damaged or Lost Packages"),
    (
        "The carrier says delivered but I never got the parcel.",
        "platform-policies.md",
        "Damaged or Lost Packages",
    ),
    ("Can I have my personal information erased?", "platform-policies.md", "Privacy and Your Data"),
    ("Who pays customs duties on international orders?", "platform-policies.md", "Shipping Times and Costs"),
    ("What does the word karma literally mean?", "vedic-concepts.md", "Karma"),
)
