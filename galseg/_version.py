__version__ = "0.1.0"

#: Revision of the numbers the engine computes.  Part of every product key
#: (with ``__version__``): bump it whenever a change alters results, so that
#: products cached by the earlier code are recomputed rather than trusted.
#: 2: CLEAN-merged pixels that SExtractor leaves blanked (engine.stuck_rows).
ENGINE_REVISION = 2
