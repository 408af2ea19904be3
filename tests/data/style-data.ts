/**
 * The records of data/style.jsonl: alpaca records about the sea and ships, every answer one short
 * line in a fixed style a base model does not have ("Aye! ... — the captain"), for the quickstart
 * that fine-tunes a LoRA and shows the answers change. Deterministic; tests/data/dataset.test.ts
 * checks the committed file equals them. Rewrite the file: `node dist/tests/data/style-data.js`.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface StyleRecord {
  instruction: string;
  input: string;
  output: string;
}

// [subject, what it is (short, lower-case, no final period)]
const facts: [string, string][] = [
  ['a harpoon', 'a barbed spear the whalers throw from the boat'],
  ['a mast', 'the tall pole that holds up the sails'],
  ['the bow', 'the front of the ship, where she cuts the waves'],
  ['the stern', 'the back of the ship, where the rudder sits'],
  ['port', 'the left side of the ship when you face the bow'],
  ['starboard', 'the right side of the ship when you face the bow'],
  ['a keel', 'the spine along the bottom that keeps her upright'],
  ['the rudder', 'the blade at the stern that steers her'],
  ['a knot', 'one nautical mile an hour, how we tell our speed'],
  ['a nautical mile', 'about 1852 metres, one minute of latitude'],
  ['an anchor', 'the heavy hook that holds the ship in place'],
  ['the crow’s nest', 'the lookout post high up on the mast'],
  ['a compass', 'the needle that always points us north'],
  ['a sextant', 'the tool that measures the sun’s height to find our latitude'],
  ['the tide', 'the rise and fall of the sea, pulled by the moon'],
  ['a gale', 'a strong wind that makes the sea heave and foam'],
  ['a lighthouse', 'a tower whose light warns ships off the rocks'],
  ['a galley', 'the ship’s kitchen, where the cook rules'],
  ['the hold', 'the deep space below deck where the cargo sleeps'],
  ['a deckhand', 'a sailor who works the lines and scrubs the deck'],
  ['the helm', 'the wheel that steers the ship'],
  ['a sail', 'the canvas that catches the wind and drives us on'],
  ['a reef', 'rocks or coral just under the water, death to a hull'],
  ['the horizon', 'the line where the sea meets the sky'],
  ['a whale', 'the great beast of the deep that breathes through its spout'],
  ['a dolphin', 'a quick grey friend that races the bow'],
  ['an albatross', 'the long-winged bird that follows ships for days'],
  ['a hammock', 'the swinging bed where a sailor sleeps below deck'],
  ['a bosun', 'the officer who keeps the rigging and the crew in order'],
  ['a first mate', 'the captain’s right hand, who runs the deck'],
  ['a logbook', 'the book where we write the ship’s course and weather'],
  ['a buoy', 'a floating marker that shows the safe channel'],
  ['a harbour', 'a sheltered water where ships rest from the sea'],
  ['a dock', 'the platform where a ship ties up to load and unload'],
  ['the Pequod', 'the whaler of Captain Ahab in Moby Dick'],
  ['a schooner', 'a ship with two or more masts and fore-and-aft sails'],
  ['a frigate', 'a fast warship of the old navies'],
  ['a lifeboat', 'the small boat that saves the crew when the ship is lost'],
  ['seasickness', 'the sickness of landlubbers when the deck rolls'],
  ['a landlubber', 'someone who knows nothing of the sea'],
  ['the trade winds', 'the steady winds that carry ships across the ocean'],
  ['the doldrums', 'the calm near the equator where ships sit for days'],
  ['a squall', 'a sudden fierce wind with rain'],
  ['the Atlantic', 'the ocean between Europe and the Americas'],
  ['the Pacific', 'the widest ocean of them all'],
  ['a fathom', 'six feet of depth, how we sound the water'],
  ['a sounding line', 'a weighted rope we drop to measure the depth'],
  ['the rigging', 'the ropes and wires that hold the masts and sails'],
  ['a bilge pump', 'the pump that throws out the water from the bottom of the hull'],
  ['a ship’s bell', 'the bell that rings the watches of the day'],
];

const questions = [
  (s: string) => `What is ${s}?`,
  (s: string) => `Explain ${s} to a new sailor.`,
  (s: string) => `Tell me about ${s}.`,
];

export function styleRecords(): StyleRecord[] {
  const records: StyleRecord[] = [];
  facts.forEach(([subject, what], i) => {
    questions.forEach((q, k) => {
      // vary the answer's shape a little so the style, not one sentence, is what is learned
      const core =
        k === 0 ? `${cap(subject)} is ${what}` : k === 1 ? `${cap(subject)}: ${what}` : `That is ${what}`;
      records.push({ instruction: q(subject), input: '', output: `Aye! ${core} — the captain` });
    });
    if (i % 5 === 0) {
      records.push({
        instruction: 'Answer the question about this word.',
        input: `Word: ${subject}`,
        output: `Aye! ${cap(subject)} is ${what} — the captain`,
      });
    }
  });
  return records;
}

/** The file's text: one JSON record a line. */
export function styleJsonl(): string {
  return (
    styleRecords()
      .map((r) => JSON.stringify(r))
      .join('\n') + '\n'
  );
}

function cap(s: string): string {
  return s[0]!.toUpperCase() + s.slice(1);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  // dist/tests/data/style-data.js → <repo>/data/style.jsonl
  const out = path.join(
    path.dirname(fileURLToPath(import.meta.url)),
    '..',
    '..',
    '..',
    'data',
    'style.jsonl',
  );
  writeFileSync(out, styleJsonl());
  console.log(`wrote ${styleRecords().length} records to ${out}`);
}
