"""What jetjax finds on real models: the demo's findings, the diffing study, the faithfulness study."""
