"""The built-in calibration text of the quantizers: plain English prose written for plugformer
(no third-party text), on everyday, technical and narrative topics, so calibration sees varied
vocabulary. It is not the held-out text the perplexity numbers use (``tests/data``)."""

DEFAULT_TEXT = """\
The harbour town woke slowly on winter mornings. Fishing boats came in before dawn, their decks
stacked with crates of ice, and the gulls followed them in wide, noisy circles. By eight o'clock
the bakery on the corner had sold its first tray of rolls, and the ferry to the island was
loading cars one at a time, the deckhand waving each driver forward with a gloved hand.

Most people who live in such a place learn to read the weather from the water. A flat grey sea
with a faint swell from the west usually means rain by afternoon. When the wind turns north and
the air smells of salt and metal, the older fishermen stay ashore and mend their nets instead.
Nobody writes these rules down; children pick them up by listening to their grandparents argue
about them over dinner.

A computer program is a list of instructions, but a good program is also a piece of writing
meant for other people. The names of variables, the order of functions and the comments that
explain why something is done all help the next reader. When a function grows longer than a
screen, it is often a sign that it is doing two jobs at once. Splitting it in two, and giving
each half a name that says what it does, makes both halves easier to test.

Testing is cheaper than debugging. A small test that runs in a fraction of a second can be run
after every change, and it catches mistakes while the change is still fresh in your mind. Large
tests that need a network connection or a graphics card are useful too, but they should be
marked so that a developer on a laptop can skip them and still trust the rest of the suite.

Photosynthesis is the process by which plants, algae and some bacteria turn light into chemical
energy. Inside the chloroplasts of a leaf, pigments such as chlorophyll absorb mostly red and
blue light and reflect green, which is why forests look green to us. The energy captured from
light splits water molecules, releasing oxygen, and drives a cycle of reactions that builds
sugars out of carbon dioxide taken from the air.

The amount of sugar a plant makes depends on light, temperature, water and the concentration of
carbon dioxide around it. On a hot, dry afternoon many plants close the small pores on their
leaves to save water, and their growth slows even though the sun is bright. Farmers who grow
tomatoes in greenhouses sometimes raise the carbon dioxide level inside to help the plants grow
faster during the short days of winter.

"Do you remember where we left the key?" Maria asked, searching her coat pockets for the third
time. Her brother shrugged and pointed at the flower pot beside the door. "Same place as always.
Under the red one." She lifted the pot, found nothing but a beetle and some damp soil, and sighed.
"Then someone has moved it." They stood on the step for a while, listening to the rain, until a
neighbour leaned out of a window and held up a small silver key on a green ribbon.

Recipes are a kind of algorithm. To make a simple bread, mix five hundred grams of flour with
ten grams of salt, seven grams of dried yeast and about three hundred and fifty millilitres of
warm water. Knead the dough for ten minutes until it is smooth and springs back when pressed.
Leave it covered in a warm place for an hour, shape it into a loaf, let it rise again, and bake
it in a hot oven for thirty to forty minutes, until the bottom sounds hollow when tapped.

The history of measurement is a history of agreement. For centuries, a foot or a pound meant
different things in neighbouring towns, and merchants had to convert between local units with
tables and patience. The metric system, introduced at the end of the eighteenth century, tried
to replace this confusion with units based on nature and on powers of ten. It took more than a
hundred years, and many international meetings, before most of the world adopted it.

A train timetable looks simple, but it hides many constraints. Two trains cannot use the same
stretch of single track at the same time, drivers need breaks, and a delay in the morning can
ripple through the whole day. Planners use mathematical models to find schedules that are
robust, which means that a small delay does not turn into a large one. Sometimes the best plan
leaves a few minutes of slack at busy stations on purpose.

Learning a new language as an adult is slow at first. The sounds feel strange in the mouth and
the grammar seems to follow rules that nobody can explain. Yet after a few months of daily
practice, patterns begin to appear: the same endings on verbs, the same little words that join
sentences together. Reading children's books, listening to the radio and speaking with patient
friends all help, because the brain learns best from examples it can understand.

Electric motors turn electrical energy into motion using magnetic fields. When current flows
through a coil of wire, the coil becomes a magnet, and it pushes against the permanent magnets
around it. By switching the direction of the current at the right moments, the motor keeps the
coil turning. Modern electric cars use motors that are efficient across a wide range of speeds,
and they can also work in reverse as generators, recovering energy when the car slows down.

The old library had a reading room with tall windows and long oak tables. In the afternoons the
light fell across the tables in bright stripes, and students moved their chairs to follow it.
The librarian, a quiet man with round glasses, knew where every book was kept, even the ones
that had been shelved in the wrong place years ago. When someone asked him a question, he would
think for a moment, walk away without a word, and come back with exactly the right volume.

Water covers about seventy percent of the surface of the Earth, but only a small fraction of it
is fresh water that people can drink. Most fresh water is frozen in glaciers and ice sheets, or
lies deep underground. Rivers and lakes hold a surprisingly small share. Because of this, cities
in dry regions invest in reservoirs, pipelines and treatment plants, and some have built plants
that remove salt from seawater, although that process uses a great deal of energy.

Good customer support starts with listening. A person who writes to complain about a broken
product usually wants three things: to be understood, to have the problem fixed, and to know
what will happen next. A short reply that repeats the problem in plain words, offers a clear
solution and gives a date for the next step is often more welcome than a long apology.

When you plan a long walk in the hills, check the forecast, tell someone where you are going
and carry more water than you think you will need. Paths that look short on a map can be steep,
and the weather at the top may be colder and windier than in the valley. A paper map and a
compass are worth packing even if your phone has a map, because batteries fail in the cold.

Numbers have personalities for people who work with them every day. Seven feels stubborn,
twelve feels generous because it divides so neatly, and one hundred feels round and complete.
Mathematicians would say these impressions are not real properties of the numbers, yet they
shape the way we build calendars, clocks and prices. A dozen eggs, twenty-four hours and sixty
minutes are all choices that made division easy for people long before calculators existed.

The committee met on Thursday to discuss the budget for the coming year. After a long debate
about the cost of repairing the bridge, the members agreed to delay the new sports hall and to
spend the money on the roads instead. The chair thanked everyone for their patience, reminded
them that the minutes would be published on the town website, and closed the meeting a little
after nine in the evening.

A neural network learns by adjusting millions of numbers, called weights, so that its outputs
match the examples it is shown. Each adjustment is small, and it is guided by the gradient, a
measure of how much the error would change if a weight moved slightly. Training a large model
can take weeks on many processors. Once trained, the model can be compressed, for example by
storing its weights with fewer bits, so that it runs faster and fits on smaller machines.

In late summer the orchard smelled of ripe apples and cut grass. The pickers started early,
climbing wooden ladders with canvas bags slung over their shoulders, and by noon the crates at
the end of each row were full. The best fruit went to the market in the city; the bruised ones
were pressed into juice in the barn, where the old press creaked and groaned with every turn.
"""
