"""nbgrader's configuration for the course "llm-principles" (nbgrader 0.9).

Run nbgrader from the folder that holds this file (the instructor edition that
`python tools/course.py build` writes, or course/ itself): it reads the assignments from
source/<assignment_id>/<assignment_id>.ipynb and writes release/, submitted/, autograded/ and
feedback/ beside it, with the gradebook in gradebook.db.
"""

c = get_config()  # noqa: F821  (nbgrader's config loader provides get_config)

c.CourseDirectory.course_id = "llm-principles"
c.CourseDirectory.source_directory = "source"  # instructor notebooks: solutions and hidden tests
c.CourseDirectory.release_directory = "release"  # student notebooks written by generate_assignment
c.CourseDirectory.submitted_directory = "submitted"  # submitted/<student_id>/<assignment_id>/
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"

# Autograding executes the students' code: every cell gets at most this many seconds, then the
# kernel is interrupted, the cell records a CellTimeoutError and the next cell runs.
c.Execute.timeout = 60
c.Execute.interrupt_on_timeout = True
