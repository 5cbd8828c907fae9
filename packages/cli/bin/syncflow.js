#!/usr/bin/env node
// The `syncflow` command (npx syncflow): a committed entry point, so npm links it even before the first build.
import '../dist/main.js';
